"""Training: the pair and metadata rules, reproducibility, resuming, checkpoints, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.training import TINY, configs, synthetic_cache
from typer.testing import CliRunner

from amr.cache import ClipEmbedding, EmbeddingCache, write_cache
from amr.cli import app
from amr.config import TrainConfig
from amr.errors import AmrError
from amr.model import checkpoint
from amr.model.checkpoint import load_checkpoint
from amr.model.model import ModelConfig
from amr.training import loop as train_module
from amr.training import train
from amr.training.data import _load_source, _plan_epoch, _training_pairs
from amr.training.validation import _validation_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("caches") / "sounds.h5")


def history(directory: Path) -> list[dict]:
    keep = ("epoch", "loss", "lr", "val_map10", "val")
    return [{k: r.get(k) for k in keep} for r in map(json.loads, (directory / "log.jsonl").read_text().splitlines())]


def test_captions_as_metadata_never_pair_a_caption_with_itself(cache: Path) -> None:
    model, training = configs(cache, metadata=("captions",), metadata_dropout=0.0)
    with EmbeddingCache(cache) as c:
        source = _load_source(c)
        pairs = _training_pairs([source], model.metadata)
        for epoch in range(3):
            plan = _plan_epoch(pairs, model, training, epoch)
            for p, text in enumerate(plan.metadata):
                captions = pairs.clip_captions[pairs.pair_clip[p]]
                assert text in captions and text != captions[pairs.pair_caption[p]]
        item = c.items[source.val[0]]
        for j, caption in enumerate(item.captions):
            other = _validation_metadata(item, model, j)
            assert other in item.captions and other != caption
        single = replace(item, captions=["only one"])
        assert _validation_metadata(single, model, 0) is None


def test_metadata_dropout_drops_the_chosen_share_reproducibly(cache: Path) -> None:
    with EmbeddingCache(cache) as c:
        model, training = configs(cache)
        pairs = _training_pairs([_load_source(c)], model.metadata)
        with_metadata = sum(pairs.clip_metadata[i] is not None for i in pairs.pair_clip)
        kept = {}
        for p in (0.0, 0.5, 1.0):
            plan = _plan_epoch(pairs, model, replace(training, metadata_dropout=p), 0)
            kept[p] = sum(m is not None for m in plan.metadata)
        again = _plan_epoch(pairs, model, replace(training, metadata_dropout=0.5), 0)
        assert kept[0.0] == with_metadata > 0 and kept[1.0] == 0
        assert 0.3 * with_metadata < kept[0.5] < 0.7 * with_metadata
        assert sum(m is not None for m in again.metadata) == kept[0.5]


def test_each_epoch_draws_views_and_length_bucketed_batches_of_every_pair(cache: Path) -> None:
    with EmbeddingCache(cache) as c:
        model, training = configs(cache, batch_size=4)
        pairs = _training_pairs([_load_source(c)], model.metadata)
        first, second = (_plan_epoch(pairs, model, training, e) for e in (0, 1))
        assert len(pairs) == 3 * sum(1 for item in c.items if item.split == "train")
        assert sorted(np.concatenate(first.batches)) == list(range(len(pairs)))
        assert not np.array_equal(np.concatenate(first.batches), np.concatenate(second.batches))
        assert set(first.views) == {0, 1}
        lengths = pairs.clip_length[pairs.pair_clip]
        spread = np.mean([np.ptp(lengths[b]) for b in first.batches])
        shuffled = np.random.default_rng(0).permutation(len(pairs))
        assert spread < 0.5 * np.mean([np.ptp(lengths[shuffled[i : i + 4]]) for i in range(0, len(pairs), 4)])


def test_same_seed_same_metrics_and_another_seed_differs(cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion="late")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(tmp_path / name, model, replace(training, seed=seed), progress=False, text=text_encoder)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    assert history(tmp_path / "a") != history(tmp_path / "c")


def test_resume_after_an_interruption_continues_identically(cache: Path, tmp_path: Path, text_encoder, monkeypatch) -> None:
    model, training = configs(cache, fusion="mid", epochs=3, metadata_dropout=0.3)
    train(tmp_path / "straight", model, training, progress=False, text=text_encoder)

    run_epoch = train_module._run_epoch

    def interrupted(*args, **kwargs):
        if args[7] == 1:  # the epoch argument: Ctrl-C during the second epoch
            raise KeyboardInterrupt
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_run_epoch", interrupted)
    with pytest.raises(AmrError, match="holds epoch 1: continue with `amr train --resume"):
        train(tmp_path / "broken", model, training, progress=False, text=text_encoder)
    assert [r["epoch"] for r in history(tmp_path / "broken")] == [0, 1]  # before training, and the first epoch
    load_checkpoint(tmp_path / "broken", text=text_encoder)  # the completed epoch is usable
    monkeypatch.undo()
    result = train(tmp_path / "broken", model, training, resume=True, progress=False, text=text_encoder)
    assert result.epochs == 3
    assert history(tmp_path / "broken") == history(tmp_path / "straight")
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "broken" / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("fusion", ["none", "metadata", "late", "mid"])
def test_every_fusion_trains_and_loads_as_a_retriever(fusion: str, cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion=fusion, epochs=6)
    result = train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    assert result.best_map10 > 0.45  # a random ranking of the 10 val items scores 0.29
    retriever = load_checkpoint(tmp_path / "ck", text=text_encoder)
    assert retriever.fusion == fusion and retriever.spec == {"kind": "trained", "path": str(tmp_path / "ck")}
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["best"]["epoch"] == result.best_epoch and config["audio"]["audio_model"] == "synthetic"
    assert not any(k.startswith("text.") for k in load_file(tmp_path / "ck" / "model.safetensors"))
    dim = sum(d for _, d in retriever.parts)
    with EmbeddingCache(cache) as c:
        val = [i for i, item in enumerate(c.items) if item.split == "val"]
        items = retriever.encode_items(c, val)
        queries = retriever.encode_queries([c.items[i].captions[0] for i in val])
        assert items.shape == (len(val), dim) and queries.shape == (len(val), dim)
        assert np.isfinite(items).all()
        if fusion != "none":
            tagged = retriever.encode_items(c, val, auto_tags=3)
            bare = [k for k, i in enumerate(val) if not c.items[i].metadata]
            assert bare and not np.allclose(tagged[bare], items[bare])
            has = [k for k, i in enumerate(val) if c.items[i].metadata]
            np.testing.assert_allclose(tagged[has], items[has], atol=1e-6)
        if fusion == "metadata":
            with pytest.raises(AmrError, match="cannot search by audio example"):
                retriever.encode_examples([c.sequence(0)], c.tags[:1])
        else:
            assert retriever.encode_examples([c.sequence(0)], c.tags[:1]).shape == (1, dim)


def test_fine_tuning_trains_and_stores_the_text_encoder(cache: Path, tmp_path: Path, text_encoder) -> None:
    model = ModelConfig(fusion="late", separate_text_encoders=True, **TINY)
    training = TrainConfig(epochs=1, caches=(str(cache),), batch_size=48)
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    assert all(torch.equal(before[k], v) for k, v in text_encoder.state_dict().items())  # the caller's copy untouched
    stored = load_file(tmp_path / "ck" / "model.safetensors")
    changed = [k for k in before if not torch.equal(stored["text." + k], before[k])]
    assert changed and any(k.startswith("separate_text.") for k in stored)
    retriever = load_checkpoint(tmp_path / "ck", text=text_encoder)
    tuned = retriever.model.text.state_dict()
    assert all(torch.equal(tuned[k], stored["text." + k]) for k in before)


def test_a_cache_without_val_split_holds_out_a_fixed_tenth(tmp_path: Path, text_encoder) -> None:
    path = synthetic_cache(tmp_path / "train-only.h5", n=60, views=0, splits=("train",))
    with EmbeddingCache(path) as c:
        first, second = _load_source(c), _load_source(c)
        assert first.val == second.val and 0 < len(first.val) < 20 and not set(first.val) & set(first.train)
    model, training = configs(path, epochs=1)
    assert train(tmp_path / "ck", model, training, progress=False, text=text_encoder).epochs == 1


def test_combined_caches_and_refusals(cache: Path, tmp_path: Path, text_encoder) -> None:
    other = synthetic_cache(tmp_path / "other.h5", n=30, views=0)
    model, training = configs(cache, epochs=1)
    result = train(tmp_path / "ck", model, replace(training, caches=(str(cache), str(other))), progress=False, text=text_encoder)
    assert set(history(tmp_path / "ck")[1]["val"]) == {str(cache), str(other)}
    with pytest.raises(AmrError, match="already holds a checkpoint"):
        train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    with pytest.raises(AmrError, match="cannot resume with other options: fusion 'mid'"):
        train(tmp_path / "ck", replace(model, fusion="mid"), training, resume=True, progress=False, text=text_encoder)
    foreign = synthetic_cache(tmp_path / "foreign.h5", n=10, views=0, model="another")
    retriever = load_checkpoint(result.checkpoint, text=text_encoder)
    with EmbeddingCache(foreign) as c, pytest.raises(AmrError, match="holds embeddings of another .*trained on synthetic"):
        retriever.encode_items(c, [0])
    test_only = synthetic_cache(tmp_path / "test-only.h5", n=10, views=0, splits=("test",))
    with pytest.raises(AmrError, match="no train-split items"):
        train(tmp_path / "ck2", *configs(test_only), progress=False, text=text_encoder)


def test_a_different_text_encoder_is_refused(cache: Path, tmp_path: Path, text_encoder) -> None:
    train(tmp_path / "ck", *configs(cache, epochs=1, fusion="metadata"), progress=False, text=text_encoder)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["text"]["fingerprint"] = "f" * 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(AmrError, match="fingerprint ffffffffffff"):
        load_checkpoint(tmp_path / "ck", text=text_encoder)
    with pytest.raises(AmrError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_cli_trains_records_the_checkpoint_and_prints_a_summary(cache: Path, tmp_path: Path, text_encoder, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "TextEncoder", lambda name: text_encoder)  # skip reloading it
    runner = CliRunner()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "latest.json").write_text(json.dumps({"cache": str(cache)}))
    args = ["train", "--fusion", "none", "--freeze-text", "--epochs", "1", "--width", "16", "--heads", "2", "-w", str(ws)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(summary["checkpoint"]).parent == ws / "checkpoints" and summary["epochs"] == 1
    assert json.loads((ws / "latest.json").read_text())["checkpoint"] == summary["checkpoint"]
    again = runner.invoke(app, ["train", "--resume", "-o", summary["checkpoint"], "--epochs", "2", "-w", str(ws)])
    assert again.exit_code == 1 and "cannot resume with other options: epochs 2 (was 1)" in again.stderr
    assert runner.invoke(app, ["train", "--resume", "-w", str(ws)]).exit_code == 1


# --- where training starts, and what it selects ---------------------------------------------


@pytest.mark.parametrize("fusion", ["none", "metadata", "late", "mid"])
def test_before_the_first_step_the_model_scores_exactly_as_zero_shot(fusion: str, sounds_cache: Path, text_encoder) -> None:
    """On the real `sounds` clips (15 of 39 without metadata), a zero-shot start
    ranks every caption query exactly as `amr index --zero-shot` does."""
    from amr.model.checkpoint import TrainedRetriever
    from amr.model.model import RetrievalModel
    from amr.model.zeroshot import ZeroShotConfig, ZeroShotRetriever
    from amr.training.loop import _complete, _zero_shot_start

    weights = {"none": (1.0, 0.0), "metadata": (0.0, 1.0)}.get(fusion, (1.0, 1.0))
    zero_shot = ZeroShotRetriever(ZeroShotConfig(audio_weight=weights[0], metadata_weight=weights[1]), text_encoder)
    with EmbeddingCache(sounds_cache) as cache:
        config = _complete(
            ModelConfig(fusion=fusion, freeze_text=True, audio_weight=weights[0], metadata_weight=weights[1]), cache.info, text_encoder
        )
        torch.manual_seed(0)
        model = RetrievalModel(config, text_encoder)
        model.start_from_zero_shot(_zero_shot_start(config, text_encoder).class_embeddings)
        trained = TrainedRetriever(Path("/start"), model, cache.info, "f", "c")
        rows = list(range(len(cache)))
        queries = [caption for item in cache.items for caption in item.captions]
        expected = zero_shot.encode_queries(queries) @ zero_shot.encode_items(cache, rows).T
        got = trained.encode_queries(queries) @ trained.encode_items(cache, rows).T
    # float32 products of unit vectors of 384 dims: rounding differs by a few 1e-7 between the two paths
    np.testing.assert_allclose(got, expected, atol=1e-5)
    order = np.argsort(-expected, axis=1, kind="stable")  # zero-shot's ranking of each query
    decided = np.diff(np.take_along_axis(expected, order, axis=1), axis=1) < -2e-5  # neighbours more than 2e-5 apart
    assert np.all(np.diff(np.take_along_axis(got, order, axis=1), axis=1)[decided] < 0)  # are ranked the same way


def test_epoch_zero_is_validated_and_kept_when_training_never_beats_it(cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion="late", epochs=2, lr=0.0)  # a learning rate of 0 changes nothing
    result = train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    log = history(tmp_path / "ck")
    assert [r["epoch"] for r in log] == [0, 1, 2] and log[0]["loss"] is None
    assert result.best_epoch == 0 and result.best_map10 == log[0]["val_map10"]


def test_the_paper_model_still_trains_from_random(cache: Path, tmp_path: Path, text_encoder) -> None:
    model, training = configs(cache, fusion="mid", init="random", text_pooling="cls", epochs=2)
    train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    retriever = load_checkpoint(tmp_path / "ck", text=text_encoder)
    stored = json.loads((tmp_path / "ck" / "config.json").read_text())["model"]
    assert (stored["init"], stored["text_pooling"]) == ("random", "cls")
    assert retriever.parts == [("audio", TINY["width"]), ("metadata", TINY["width"])]  # the space is the model width
    assert not any("class_embeddings" in k for k in load_file(tmp_path / "ck" / "model.safetensors"))


def test_the_text_models_own_pooling_is_the_default(cache: Path, tmp_path: Path, text_encoder) -> None:
    train(tmp_path / "ck", *configs(cache, fusion="none", epochs=1), progress=False, text=text_encoder)
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model"]["text_pooling"] == "mean"  # MiniLM's modules.json
    plain = tmp_path / "plain-bert"  # the same files without the sentence-transformers pooling config
    plain.mkdir()
    for file in Path(text_encoder.source).iterdir():
        if file.is_file() and file.name != "modules.json":
            (plain / file.name).symlink_to(file)
    from amr.model.text import native_pooling

    assert native_pooling(Path(text_encoder.source)) == "mean" and native_pooling(plain) == "cls"


def test_concept_holdout_takes_whole_words_out_of_training() -> None:
    from amr.training import concept_holdout

    captions = [[f"a {animal} {verb}"] for animal in ("dog", "cat", "cow", "owl", "bee") for verb in ("barks", "sleeps", "runs", "eats")]
    held = concept_holdout(captions, share=0.25)
    assert 0 < len(held) <= 5 and held == concept_holdout(captions, share=0.25)  # deterministic
    kept_words = {w for k, c in enumerate(captions) if k not in held for w in c[0].split()}
    for k in held:  # every held-out item has a word no kept item has
        assert set(captions[k][0].split()) - kept_words


def test_metadata_dropout_trains_the_stand_in_for_missing_metadata(sounds_cache: Path, tmp_path: Path, text_encoder) -> None:
    """On the real `sounds` set, items without metadata (15 of 39) start with a zero
    metadata vector (audio alone, as zero-shot); the default dropout trains it."""
    with EmbeddingCache(sounds_cache) as c:
        missing = sum(not item.metadata for item in c.items)
        clips = [
            ClipEmbedding(replace(item, split="val" if k % 4 == 0 else "train"), *c.stored(k)[:1], c.tags[k])
            for k, item in enumerate(c.items)
        ]
        write_cache(tmp_path / "sounds.h5", c.info, clips)
    assert missing == 15
    model, training = configs(tmp_path / "sounds.h5", fusion="late", epochs=3, lr=3e-3)
    assert training.metadata_dropout > 0  # the default
    train(tmp_path / "ck", model, replace(training, validation="split"), progress=False, text=text_encoder)
    stand_in = load_file(tmp_path / "ck" / "state.safetensors")["model.head.no_metadata"]
    assert stand_in.abs().sum() > 0  # it moved from zero


def test_captions_as_metadata_never_score_a_query_against_its_own_sentence(cache: Path, tmp_path: Path, text_encoder) -> None:
    from amr.evaluate import RetrieverScorer, open_collection

    model, training = configs(cache, fusion="late", metadata=("captions",), epochs=1)
    train(tmp_path / "ck", model, training, progress=False, text=text_encoder)
    retriever = load_checkpoint(tmp_path / "ck", text=text_encoder)
    with open_collection([cache], "val") as collection:
        texts = [caption for item in collection.items for caption in item.captions]
        scores = RetrieverScorer("captions", retriever).score(collection, texts)
        queries = retriever.encode_queries(texts)
        c, rows = collection.parts[0]
        q = 0
        for position, item in enumerate(collection.items):
            for k, caption in enumerate(item.captions):
                other = item.captions[1] if k == 0 else item.captions[0]  # the first caption that is not the query
                honest = queries[q] @ retriever.encode_items_with_metadata(c, [rows[position]], [other])[0]
                leaked = queries[q] @ retriever.encode_items_with_metadata(c, [rows[position]], [caption])[0]
                assert scores[q, position] == pytest.approx(honest, abs=1e-5) and abs(honest - leaked) > 1e-4
                q += 1


def test_the_kept_model_interpolates_between_the_start_and_the_trained_weights(cache: Path, tmp_path: Path, text_encoder) -> None:
    for alpha in (0.0, 0.5, 1.0):
        model, training = configs(cache, fusion="late", epochs=1, lr=3e-3, interpolation=alpha)
        result = train(tmp_path / str(alpha), model, training, progress=False, text=text_encoder)
        kept = load_file(tmp_path / str(alpha) / "model.safetensors")
        if alpha == 1.0:
            assert not (tmp_path / "1.0" / "start.safetensors").exists()  # nothing to interpolate with
            continue
        start = load_file(tmp_path / str(alpha) / "start.safetensors")
        trained = {
            k[len("model.") :]: v for k, v in load_file(tmp_path / str(alpha) / "state.safetensors").items() if k.startswith("model.")
        }
        expected = start if result.best_epoch == 0 else {k: start[k] + alpha * (trained[k] - start[k]) for k in start}
        assert kept.keys() == start.keys()
        for k in start:
            torch.testing.assert_close(kept[k], expected[k], rtol=1e-6, atol=1e-7)  # one float32 multiply-add apart
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # training moved the weights
