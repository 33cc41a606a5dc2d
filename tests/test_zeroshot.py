"""Zero-shot hybrid retrieval on the real `sounds` clips: the bridge, the fusion, machine tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amr.audio.audioset import with_machine_tags
from amr.audio.mobilenet import audioset_class_names
from amr.cache import EmbeddingCache
from amr.errors import AmrError
from amr.items import Item, caption_queries
from amr.metrics import retrieval_metrics
from amr.model.zeroshot import ZeroShotConfig, ZeroShotRetriever, load_zero_shot


@pytest.fixture(scope="module")
def retriever(text_encoder) -> ZeroShotRetriever:
    return ZeroShotRetriever(text=text_encoder)


@pytest.fixture(scope="module")
def cache(sounds_cache: Path):
    with EmbeddingCache(sounds_cache) as opened:
        yield opened


def test_bridge_hears_a_dog_without_any_metadata(retriever: ZeroShotRetriever, cache: EmbeddingCache) -> None:
    ids = ["bigsoundbank-dog", "bigsoundbank-cow", "bigsoundbank-duck", "bigsoundbank-frog", "bigsoundbank-owl"]
    rows = [cache.index_of(i) for i in ids]
    audio = retriever.audio_vectors(cache.tags[rows])
    items = retriever.fuse(audio, np.zeros_like(audio))  # metadata removed
    scores = retriever.encode_queries(["dog barking"]) @ items.T
    assert ids[int(np.argmax(scores))] == "bigsoundbank-dog"


def test_item_vector_gives_the_fused_cosine_as_inner_product(retriever: ZeroShotRetriever, cache: EmbeddingCache) -> None:
    rows = list(range(len(cache)))
    vectors = retriever.encode_items(cache, rows)
    q = retriever.text.encode(["a cat meowing"], pooling="mean", normalize=True)[0]
    a = retriever.audio_vectors(cache.tags)
    m, present = retriever.metadata_vectors(cache.items)
    assert present.sum() == 24  # 15 clips of the set have no metadata
    fused = a + m
    expected = fused @ q / np.linalg.norm(fused, axis=1)
    np.testing.assert_allclose(retriever.encode_queries(["a cat meowing"])[0] @ vectors.T, expected, atol=1e-5)
    # without metadata the item is its audio vector alone
    no_meta = ~present
    np.testing.assert_allclose(vectors[no_meta, : retriever.text.dim], a[no_meta], atol=1e-6)
    assert not vectors[no_meta, retriever.text.dim :].any()


def mean_ap(retriever: ZeroShotRetriever, cache: EmbeddingCache) -> float:
    queries = caption_queries(cache.items)
    relevant = [[cache.index_of(q.relevant[0])] for q in queries]
    scores = retriever.encode_queries([q.text for q in queries]) @ retriever.encode_items(cache, range(len(cache))).T
    return retrieval_metrics(scores, relevant).map10


def test_fusion_beats_audio_alone_and_metadata_alone(text_encoder, cache: EmbeddingCache) -> None:
    fused = mean_ap(ZeroShotRetriever(ZeroShotConfig(), text_encoder), cache)
    audio_only = mean_ap(ZeroShotRetriever(ZeroShotConfig(metadata_weight=0.0), text_encoder), cache)
    metadata_only = mean_ap(ZeroShotRetriever(ZeroShotConfig(audio_weight=0.0), text_encoder), cache)
    assert fused > audio_only + 0.02 and fused > metadata_only + 0.02


def test_machine_tags_only_for_items_without_metadata(retriever: ZeroShotRetriever, cache: EmbeddingCache) -> None:
    names = audioset_class_names()
    dog = cache.index_of("bigsoundbank-dog")
    bare = Item("x", "x.wav")
    tagged = with_machine_tags(bare, cache.tags[dog], 3)
    best = np.argsort(-cache.tags[dog])[:3]
    assert tagged.metadata == {"keywords": [names[c] for c in best]}
    assert "Dog" in tagged.metadata["keywords"]
    described = cache.items[dog]
    assert with_machine_tags(described, cache.tags[dog], 3) is described

    rows = list(range(len(cache)))
    plain, auto = retriever.encode_items(cache, rows), retriever.encode_items(cache, rows, auto_tags=3)
    changed = np.abs(plain - auto).max(axis=1) > 1e-6
    assert list(changed) == [not item.metadata for item in cache.items]


def test_spec_round_trip_and_fingerprint(retriever: ZeroShotRetriever) -> None:
    again = load_zero_shot(retriever.spec)
    assert again.fingerprint == retriever.fingerprint
    other = ZeroShotRetriever(ZeroShotConfig(metadata_weight=0.5), retriever.text)
    assert other.fingerprint != retriever.fingerprint
    with pytest.raises(AmrError):
        ZeroShotConfig(audio_weight=0.0, metadata_weight=0.0)


def test_query_by_example_uses_the_audio_segment(retriever: ZeroShotRetriever, cache: EmbeddingCache) -> None:
    dog = cache.index_of("bigsoundbank-dog")
    query = retriever.encode_examples([cache.sequence(dog)], cache.tags[dog : dog + 1])
    d = retriever.text.dim
    assert not query[0, d:].any()
    # examples are matched on the audio segment alone (cosine over that segment)
    audio = retriever.encode_items(cache, range(len(cache)))[:, :d]
    scores = query[:, :d] @ (audio / np.linalg.norm(audio, axis=1, keepdims=True)).T
    assert int(np.argmax(scores)) == dog


def test_cli_zero_shot_index_query_and_three_row_evaluation(sounds_cache: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from amr.cli import app

    runner = CliRunner()
    index = tmp_path / "zs.h5"
    built = runner.invoke(app, ["index", str(sounds_cache), "--zero-shot", "-o", str(index), "-w", str(tmp_path)])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout.strip().splitlines()[-1])["items"] == 39
    found = runner.invoke(app, ["query", "dog barking", "-i", str(index), "--top", "1", "--format", "jsonl"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["id"] == "bigsoundbank-dog"
    scored = runner.invoke(
        app, ["evaluate", "--zero-shot", "--ablate", "--cache", str(sounds_cache), "--split", "all", "--json", "-w", str(tmp_path)]
    )
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout.strip().splitlines()[-1])
    mean_ap = {model["name"]: model["metrics"]["mAP@10"] for model in summary["models"]}
    assert mean_ap["zero-shot"] > max(mean_ap["zero-shot audio only"], mean_ap["zero-shot metadata only"])
