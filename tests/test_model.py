"""The retrieval model's pieces: global token, padding mask, loss, segment layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amr.errors import AmrError
from amr.items import Item
from amr.model.heads import AudioBatch, MetadataBatch
from amr.model.model import MAX_FRAMES, AudioTower, ModelConfig, RetrievalModel, item_metadata, nt_xent, pad_sequences

TINY = dict(audio_dim=12, width=16, depth=2, heads=2, ff=32, dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


def model_of(fusion: str, text_encoder, init: str = "random") -> RetrievalModel:
    """A tiny model; from random (the paper's), unless said."""
    torch.manual_seed(0)
    return RetrievalModel(ModelConfig(fusion=fusion, init=init, freeze_text=True, **TINY), text_encoder).eval()


def test_the_global_token_starts_as_the_mean_of_the_real_frames_plus_a_bias() -> None:
    torch.manual_seed(0)
    tower = AudioTower(ModelConfig(**TINY))
    torch.nn.init.normal_(tower.global_bias)
    frames = torch.randn(2, 6, 12)
    lengths = torch.tensor([6, 3])
    projected, valid, token = tower.global_token(frames, lengths)
    assert valid.tolist()[1] == [True] * 3 + [False] * 3
    expected = projected[1, :3].mean(0) + tower.global_bias
    torch.testing.assert_close(token[1], expected)
    assert not torch.allclose(token[1], projected[1].mean(0) + tower.global_bias)  # padding excluded


@pytest.mark.parametrize("extra", [False, True])
def test_padded_frames_change_nothing(extra: bool) -> None:
    torch.manual_seed(0)
    tower = AudioTower(ModelConfig(**TINY), extra_tokens=int(extra)).eval()
    short = torch.randn(1, 4, 12)
    long = torch.randn(1, 9, 12)
    token = torch.randn(1, 1, 16) if extra else None
    alone = tower(short, torch.tensor([4]), token)
    padded = torch.cat([torch.cat([short, 100 * torch.randn(1, 5, 12)], 1), long])  # garbage in the padding
    together = tower(padded, torch.tensor([4, 9]), None if token is None else token.expand(2, -1, -1))
    assert together.shape == (2, 2 if extra else 1, 16)
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)


def test_pad_sequences_pads_with_zeros_and_subsamples_very_long_sequences() -> None:
    frames, lengths = pad_sequences([np.ones((2, 3), np.float16), np.full((MAX_FRAMES * 2, 3), 2.0)])
    assert frames.dtype == torch.float32 and frames.shape == (2, MAX_FRAMES, 3)
    assert lengths.tolist() == [2, MAX_FRAMES]
    assert frames[0, 2:].abs().sum() == 0 and frames[0, :2].min() == 1


def test_nt_xent_matches_a_hand_computed_case() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    t = 0.5
    e = math.exp
    rows = -math.log(e(1.8) / (e(1.8) + e(0.2))) - math.log(e(1.6) / (e(0.4) + e(1.6)))
    cols = -math.log(e(1.8) / (e(1.8) + e(0.4))) - math.log(e(1.6) / (e(0.2) + e(1.6)))
    expected = 0.5 * (rows / 2 + cols / 2)
    assert nt_xent(scores, torch.tensor([0, 1]), t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_masks_other_captions_of_the_same_clip() -> None:
    scores = torch.tensor([[0.9, 0.7, 0.1], [0.7, 0.9, 0.2], [0.1, 0.3, 0.8]])
    masked = nt_xent(scores, torch.tensor([5, 5, 6]), 1.0)
    # pairs 0 and 1 share a clip: each only competes with pair 2
    e = math.exp
    expected_rows = [
        -math.log(e(0.9) / (e(0.9) + e(0.1))),
        -math.log(e(0.9) / (e(0.9) + e(0.2))),
        -math.log(e(0.8) / (e(0.1) + e(0.3) + e(0.8))),
    ]
    expected_cols = [
        -math.log(e(0.9) / (e(0.9) + e(0.1))),
        -math.log(e(0.9) / (e(0.9) + e(0.3))),
        -math.log(e(0.8) / (e(0.1) + e(0.2) + e(0.8))),
    ]
    assert masked.item() == pytest.approx(0.5 * (np.mean(expected_rows) + np.mean(expected_cols)), rel=1e-6)
    assert nt_xent(scores, torch.tensor([5, 6, 7]), 1.0).item() > masked.item()


def batch(b: int = 3, t: int = 7, seed: int = 0) -> AudioBatch:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 5, 2][:b])
    return AudioBatch(torch.randn(b, t, 12, generator=generator), lengths, torch.rand(b, 527, generator=generator))


def present(meta: torch.Tensor) -> MetadataBatch:
    return MetadataBatch(meta, torch.ones(len(meta), dtype=torch.bool))


def test_late_fusion_score_is_the_inner_product_of_the_parts(text_encoder) -> None:
    model = model_of("late", text_encoder)
    audio = batch()
    meta, q = torch.randn(3, text_encoder.dim), torch.randn(4, text_encoder.dim)
    with torch.no_grad():
        items, queries = model.item_vectors(audio, present(meta)), model.query_vectors(q)
        a = model.head.audio(model.audio(audio.frames, audio.lengths)[:, 0], audio.tags)
        m = model.head.metadata(meta)
        expected = F.normalize(model.head.query(q), dim=-1) @ F.normalize(a + m, dim=-1).T
    assert model.parts == [("audio", 16), ("metadata", 16)] and items.shape == (3, 32)
    torch.testing.assert_close(queries @ items.T, expected)


def test_mid_fusion_score_is_the_weighted_sum_of_two_cosines(text_encoder) -> None:
    model = model_of("mid", text_encoder)
    audio = batch()
    meta, q = torch.randn(3, text_encoder.dim), torch.randn(4, text_encoder.dim)
    with torch.no_grad():
        items, queries = model.item_vectors(audio, present(meta)), model.query_vectors(q)
        tokens = model.audio(audio.frames, audio.lengths, model.head.metadata_token(meta)[:, None])
        a, m = model.head.audio(tokens[:, 0], audio.tags), model.head.metadata(tokens[:, 1])
        w = torch.softmax(model.head.query_weights(q), dim=-1)
        q_a, q_m = model.head.query_audio(q), model.head.query_metadata(q)
        expected = w[:, :1] * F.cosine_similarity(q_a[:, None], a[None], dim=-1) + w[:, 1:] * F.cosine_similarity(
            q_m[:, None], m[None], dim=-1
        )
    torch.testing.assert_close(items.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(queries @ items.T, expected)


@pytest.mark.parametrize("fusion", ["none", "metadata"])
def test_single_source_scores_are_cosines(fusion: str, text_encoder) -> None:
    model = model_of(fusion, text_encoder)
    with torch.no_grad():
        items = model.item_vectors(batch(2), present(torch.randn(2, text_encoder.dim)))
        queries = model.query_vectors(torch.randn(3, text_encoder.dim))
    assert model.parts == [("audio" if fusion == "none" else "metadata", 16)]
    torch.testing.assert_close(items.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(queries.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("fusion", ["late", "mid", "metadata"])
@pytest.mark.parametrize("init", ["random", "zero-shot"])
def test_items_without_metadata_get_the_learned_no_metadata_vector(fusion: str, init: str, text_encoder) -> None:
    model = model_of(fusion, text_encoder, init)
    q, meta = model.embed_texts(["a query"], ["dog bark", None])
    assert meta.present.tolist() == [True, False] and torch.all(meta.embeddings[1] == 0)
    torch.testing.assert_close(meta.embeddings[0], torch.from_numpy(text_encoder.encode(["dog bark"], pooling="mean")[0]))
    model.train()
    items = model.item_vectors(batch(2) if fusion != "metadata" else None, meta)
    (model.query_vectors(q) @ items.T).sum().backward()
    stand_in = model.head.no_metadata if fusion != "mid" or init == "zero-shot" else model.head.no_metadata_token
    assert stand_in.grad is not None and stand_in.grad.abs().sum() > 0  # trained by metadata dropout


def test_encoding_numpy_in_numpy_out_handles_missing_metadata(text_encoder) -> None:
    model = model_of("mid", text_encoder)
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(n, 12)).astype(np.float16) for n in (3, 9, 5)]
    tags = rng.random((3, 527)).astype(np.float32)
    items = model.encode_items(sequences, tags, ["dog", None, "rain on a roof"])
    assert items.dtype == np.float32 and items.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1, rtol=1e-5)
    one = model.encode_items(sequences[1:2], tags[1:2], [None])
    np.testing.assert_allclose(one[0], items[1], atol=1e-5)  # batching and order change nothing
    examples = model.encode_examples(sequences, tags)
    assert np.all(examples[:, 16:] == 0)
    np.testing.assert_allclose(np.linalg.norm(examples, axis=1), 1, rtol=1e-5)
    assert model.encode_queries(["a dog barks"]).shape == (1, 32)
    assert not model.training


def test_a_zero_shot_start_is_the_text_space_with_corrections_at_zero(text_encoder) -> None:
    model = model_of("late", text_encoder, "zero-shot")
    assert model.parts == [("audio", text_encoder.dim), ("metadata", text_encoder.dim)]
    corrections = [p for name, p in model.head.named_parameters() if ".linear." in name]
    assert corrections and all(torch.all(p == 0) for p in corrections)
    q = torch.randn(2, text_encoder.dim)
    with torch.no_grad():  # the query head starts as the identity (then unit length)
        torch.testing.assert_close(model.query_vectors(q), torch.cat([F.normalize(q, dim=-1)] * 2, 1))


def test_the_special_tokens_get_learned_type_embeddings() -> None:
    torch.manual_seed(0)
    tower = AudioTower(ModelConfig(**TINY), extra_tokens=1).eval()
    frames, lengths = torch.randn(1, 4, 12), torch.tensor([4])
    token = torch.randn(1, 1, 16)
    before = tower(frames, lengths, token)
    with torch.no_grad():
        # A constant shift would be removed exactly by the LayerNorm every path goes through, leaving
        # rounding alone; a ramp of unit spread cannot be normalised away.
        tower.types[1] += torch.linspace(-1.0, 1.0, 16)  # the metadata token's type
    change = (tower(frames, lengths, token) - before).abs().max().item()
    # an O(1) change of an input against float32 rounding (~1e-6 on values of order 1)
    assert tower.types.shape == (2, 16) and change > 1e-3


def test_captions_as_metadata_and_field_selection() -> None:
    item = Item("x", "/x.wav", metadata={"title": "Dog", "keywords": ["bark", "dog"]}, captions=["c0", "c1"])
    assert item_metadata(item, ("captions",), 1) == "c1"
    assert item_metadata(item, ("keywords", "title")) == "bark dog Dog"
    assert item_metadata(Item("y", "/y.wav"), ("captions",)) is None


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(fusion="early"), "unknown fusion"),
        (dict(metadata=("captions", "title")), "cannot be combined"),
        (dict(metadata=("colour",)), "expected some of"),
        (dict(freeze_text=True, separate_text_encoders=True), "only differ when fine-tuned"),
        (dict(width=10, heads=4), "not a multiple"),
        (dict(width=9, heads=1), "must be even"),
        (dict(depth="two"), "depth must be int"),
        (dict(heads=0), "heads must be at least 1"),
        (dict(init="pretrained"), "unknown init"),
        (dict(text_pooling="max"), "unknown text pooling"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(AmrError, match=message):
        ModelConfig(**options)


def test_encoding_switches_dropout_off_and_leaves_each_module_in_its_own_mode(text_encoder) -> None:
    model = model_of("mid", text_encoder).train()  # the frozen text encoder stays in eval mode
    held = next(m for name, m in model.named_modules() if name and m.training)
    held.eval()  # e.g. a part the user keeps in eval mode while the rest trains
    modes = [m.training for m in model.modules()]
    assert any(modes) and not all(modes)
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(7, 12)).astype(np.float16)] * 2
    tags = np.tile(rng.random(527).astype(np.float32), (2, 1))
    first, second = model.encode_items(sequences, tags, ["dog", "dog"])
    # dropout (0.1) was off: the same input gives the same unit vector, up to float32 summation order (~1e-7);
    # dropout would move it by ~1e-2
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-5)
    model.encode_queries(["a dog barks"])
    assert [m.training for m in model.modules()] == modes
