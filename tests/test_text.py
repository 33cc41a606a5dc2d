"""The text encoder: normalisation, tokenisation, encode() and model resolution."""

from __future__ import annotations

import hashlib
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from amr.errors import AmrError
from amr.model.text import DEFAULT_TEXT_MODEL, MAX_TOKENS, TextEncoder, normalize_text

TEXTS = [
    "A dog barks twice, then a car drives by on a wet road while rain falls steadily.",
    "birds",
    "Water drips into a metal bucket.",
    "",
    "people talking in a busy cafe",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("A Dog's  BARK!!", "a dog s bark"),
        ("rain,on-the_roof...", "rain on the roof"),
        ("  Café\tnoise\n", "café noise"),
        ("?!", ""),
    ],
)
def test_normalize_text(raw, normalised):
    assert normalize_text(raw) == normalised


def test_default_encoder_attributes(text_encoder):
    assert text_encoder.name == DEFAULT_TEXT_MODEL
    assert text_encoder.dim == 384
    weights = Path(text_encoder.source) / "model.safetensors"
    with open(weights, "rb") as f:
        assert text_encoder.fingerprint == hashlib.file_digest(f, "sha256").hexdigest()


def test_tokenize_normalises_and_pads_to_the_longest(text_encoder):
    tokens = text_encoder.tokenize(["DOG, barking!", "dog barking in the distance"])
    assert tokens["input_ids"].shape == (2, 7)  # [CLS] 5 words [SEP]
    assert tokens["attention_mask"].sum(1).tolist() == [4, 7]
    assert text_encoder.tokenize(["DOG, barking!"])["input_ids"].tolist() == [
        text_encoder.tokenize(["dog barking"])["input_ids"][0].tolist()
    ]


def test_tokenize_truncates_at_max_tokens(text_encoder):
    tokens = text_encoder.tokenize(["dog " * 100, "cat"])
    assert tokens["input_ids"].shape == (2, MAX_TOKENS)
    assert tokens["input_ids"][0, -1].item() == text_encoder.tokenizer.sep_token_id


def test_encode_restores_the_input_order(text_encoder):
    batched = text_encoder.encode(TEXTS, batch_size=2)
    one_by_one = np.stack([text_encoder.encode([t])[0] for t in TEXTS])
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)


def test_encode_pooling_and_normalisation(text_encoder):
    cls = text_encoder.encode(TEXTS, pooling="cls")
    mean = text_encoder.encode(TEXTS, pooling="mean")
    assert not np.allclose(cls, mean, atol=1e-2)
    unit = text_encoder.encode(TEXTS, pooling="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


def test_encode_empty_list(text_encoder):
    out = text_encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_encode_restores_train_mode(text_encoder):
    text_encoder.train()
    text_encoder.model.embeddings.eval()  # e.g. a frozen part
    try:
        first, second = text_encoder.encode(["dog barking", "dog barking"])
        np.testing.assert_array_equal(first, second)  # dropout was off
        assert text_encoder.training and text_encoder.model.encoder.training
        assert not text_encoder.model.embeddings.training
    finally:
        text_encoder.eval()


def test_mean_pooling_is_semantically_sane(text_encoder):
    query, near, far = text_encoder.encode(["dog barking", "a dog barks loudly", "rain on a tin roof"], pooling="mean")
    assert cosine(query, near) > cosine(query, far) + 0.3


def test_missing_directory_is_an_amr_error(tmp_path):
    with pytest.raises(AmrError, match="no such directory"):
        TextEncoder(str(tmp_path / "no-such-model"))
    (tmp_path / "file.txt").write_text("not a model")
    with pytest.raises(AmrError, match="not a directory"):
        TextEncoder(str(tmp_path / "file.txt"))


def test_directory_without_a_model_is_an_amr_error(tmp_path):
    with pytest.raises(AmrError, match="no model weights"):
        TextEncoder(str(tmp_path))


def test_unknown_hub_name_offline_is_an_amr_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AmrError, match="'amr-test/no-such-model'.*local model directory"):
        TextEncoder("amr-test/no-such-model")


def test_hub_name_loads_from_the_hugging_face_cache(monkeypatch, tmp_path, text_encoder):
    """A Hub name resolves to its cached snapshot through the same loader, offline."""
    repo = tmp_path / "models--amr-test--minilm"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in Path(text_encoder.source).glob("*"):
        if file.is_file():
            (snapshot / file.name).symlink_to(file)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    encoder = TextEncoder("amr-test/minilm")
    assert encoder.name == "amr-test/minilm"
    assert Path(encoder.source) == snapshot
    assert encoder.fingerprint == text_encoder.fingerprint
    np.testing.assert_allclose(encoder.encode(TEXTS[:2]), text_encoder.encode(TEXTS[:2]), atol=1e-5)


def test_encode_progress_stays_off_stdout(text_encoder, capsys):
    with_bar = text_encoder.encode(TEXTS, batch_size=2, progress=True)
    np.testing.assert_array_equal(with_bar, text_encoder.encode(TEXTS, batch_size=2))
    assert capsys.readouterr().out == ""
