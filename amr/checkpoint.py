"""The checkpoint format, defined here only (``amr-checkpoint``, version 1).

A checkpoint is a directory::

    config.json         format, version, amr version; "model": every ModelConfig
                        option; "audio": the CacheInfo of the caches it was
                        trained on (audio model, weights sha256, embedding size);
                        "text": the text encoder's name or directory, fingerprint
                        and whether its weights are stored; "training": the
                        TrainConfig; "best": epoch and validation mAP@10
    model.safetensors   the best epoch's weights (no pickle). A frozen text
                        encoder is not stored: it is rebuilt from its name and
                        refused if its fingerprint differs
    log.jsonl           one JSON object per completed epoch
    state.safetensors   the last completed epoch, to resume training: weights,
                        optimizer and scheduler state, epoch, history

Every file is written to a temporary name and renamed into place, so a killed
run leaves the previous version intact.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from amr import __version__
from amr.cache import CacheInfo, EmbeddingCache
from amr.errors import AmrError
from amr.model import ModelConfig, RetrievalModel, item_metadata
from amr.text import TextEncoder

FORMAT = "amr-checkpoint"
VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
STATE = "state.safetensors"
LOG = "log.jsonl"
_TEXT_PREFIX = "text."  # state-dict keys of the (shared) text encoder


def write_config(
    directory: Path,
    model: RetrievalModel,
    audio: CacheInfo,
    training: dict[str, Any],
    best: dict[str, Any] | None = None,
) -> None:
    """config.json: everything needed to rebuild ``model`` and to check its partners."""
    config = {
        "format": FORMAT,
        "version": VERSION,
        "amr_version": __version__,
        "model": asdict(model.config),
        "audio": asdict(audio),
        "text": {
            "name": model.config.text_model,
            "fingerprint": model.text.fingerprint,
            "dim": model.text.dim,
            "weights_stored": not model.config.freeze_text,
        },
        "training": training,
        "best": best,
    }
    _write_atomic(directory / CONFIG, (json.dumps(config, indent=2) + "\n").encode())


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.exists():
        raise AmrError(f"{directory}: not a checkpoint (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AmrError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if config.get("format") != FORMAT:
        raise AmrError(f"{path}: not an amr checkpoint")
    if config.get("version") != VERSION:
        raise AmrError(f"{path}: checkpoint format version {config.get('version')}, this amr reads version {VERSION}")
    missing = {"model", "audio", "text", "training"} - set(config)
    if missing:
        raise AmrError(f"{path}: incomplete checkpoint config, no {', '.join(sorted(missing))}")
    return config


def model_config(config: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**config["model"])


def audio_info(config: dict[str, Any]) -> CacheInfo:
    return CacheInfo(**{f.name: config["audio"][f.name] for f in fields(CacheInfo)})


def build_model(config: dict[str, Any], path: Path, text: TextEncoder | None = None) -> RetrievalModel:
    """The model a config describes, with the pretrained text encoder it names
    (refused when its fingerprint differs from the one trained with); see
    ``own_encoder`` for ``text``."""
    options = model_config(config)
    text = own_encoder(options, text)
    expected = config["text"]["fingerprint"]
    if text.fingerprint != expected:
        raise AmrError(
            f"{path / CONFIG}: trained with text encoder {options.text_model!r} of fingerprint {expected[:12]}, "
            f"but {text.source} has fingerprint {text.fingerprint[:12]}; use the same model files"
        )
    return RetrievalModel(options, text)


def own_encoder(options: ModelConfig, text: TextEncoder | None) -> TextEncoder:
    """The text encoder ``options`` names: loaded, or ``text`` (an encoder of that
    name already loaded, e.g. shared by tests), copied when it will be trained
    or overwritten, so that the caller's encoder is never modified."""
    if text is None:
        return TextEncoder(options.text_model)
    if text.name != options.text_model:
        raise ValueError(f"the encoder given is {text.name!r}, the model needs {options.text_model!r}")
    return text if options.freeze_text else copy.deepcopy(text)


def model_tensors(model: RetrievalModel) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores (all but a frozen text encoder)."""
    frozen = model.config.freeze_text
    return {k: v.contiguous() for k, v in model.state_dict().items() if not (frozen and k.startswith(_TEXT_PREFIX))}


def load_model_tensors(model: RetrievalModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load stored weights; everything must match exactly (a frozen text
    encoder's weights are the only ones allowed to be absent)."""
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not (model.config.freeze_text and k.startswith(_TEXT_PREFIX))]
    if missing or result.unexpected_keys:
        raise AmrError(
            f"{path}: weights do not match the model in {CONFIG} "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def save_model(directory: Path, model: RetrievalModel) -> None:
    _save_tensors(directory / MODEL, model_tensors(model), {"format": FORMAT, "version": str(VERSION)})


def save_state(
    directory: Path,
    model: RetrievalModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: dict[str, Any],
) -> None:
    """The resumable state of a run after a completed epoch. Tensors of the
    optimizer state go to safetensors keys ``optimizer.<param>.<name>``; the
    rest (param groups, scheduler, ``progress``) to the JSON metadata."""
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param, state in optim["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{name}"] = value.contiguous()
            else:
                scalars.setdefault(str(param), {})[name] = value
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "param_groups": json.dumps(optim["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()),
        "progress": json.dumps(progress),
    }
    _save_tensors(directory / STATE, tensors, metadata)


def load_state(
    directory: Path,
    model: RetrievalModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore what save_state wrote; returns its ``progress``."""
    path = Path(directory) / STATE
    if not path.exists():
        raise AmrError(f"{directory}: no completed epoch to resume from (no {STATE})")
    tensors, metadata = _load_tensors(path)
    load_model_tensors(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    for param, values in json.loads(metadata["optimizer_scalars"]).items():
        state.setdefault(int(param), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    return json.loads(metadata["progress"])


def write_log(directory: Path, history: Sequence[dict[str, Any]]) -> None:
    _write_atomic(directory / LOG, "".join(json.dumps(h) + "\n" for h in history).encode())


def fingerprint(directory: Path) -> str:
    """sha256 of config.json and model.safetensors: identifies the trained model."""
    digest = hashlib.sha256()
    for name in (CONFIG, MODEL):
        with open(Path(directory) / name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class TrainedRetriever:
    """A trained checkpoint as a Retriever (see amr.index.Retriever)."""

    def __init__(self, path: Path, model: RetrievalModel, audio: CacheInfo, fingerprint: str):
        self.path = Path(path)
        self.model = model
        self.audio = audio
        self.fingerprint = fingerprint
        self.fusion = model.config.fusion
        self.segments = model.segments

    @property
    def spec(self) -> dict[str, Any]:
        from amr.index import checkpoint_spec

        return checkpoint_spec(self.path)

    def encode_items(self, cache: EmbeddingCache, indices: Sequence[int], auto_tags: int = 0) -> np.ndarray:
        """(n, dim) vectors of the cache's items ``indices``. With ``auto_tags``
        K > 0 an item without metadata gets its clip's K most probable AudioSet
        classes as keywords instead. A model trained with captions as metadata
        takes an item's first caption as its metadata."""
        self.require_audio(cache)
        config = self.model.config
        if auto_tags and not config.uses_metadata:
            raise AmrError(f"{self.path}: auto tags need a model that uses metadata; this one has fusion 'none'")
        indices = list(indices)
        metadata = None
        if config.uses_metadata:
            metadata = [item_metadata(cache.items[i], config.metadata) for i in indices]
            if auto_tags:
                metadata = [m if m is not None else _auto_tags(cache, i, auto_tags) for m, i in zip(metadata, indices)]
        sequences = [cache.sequence(i) for i in indices] if config.uses_audio else None
        return self.model.encode_items(sequences, metadata)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_queries(texts)

    def encode_examples(self, sequences: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
        """The trained audio tower needs the frames only; ``tags`` is unused."""
        if not self.model.config.uses_audio:
            raise AmrError(f"{self.path}: a metadata-only model (fusion 'metadata') cannot search by audio example")
        for s in sequences:
            if s.ndim != 2 or s.shape[1] != self.audio.embed_dim:
                raise AmrError(f"an example of shape {s.shape} is not a ({self.audio.embed_dim}-dim) frame sequence of {self.audio.audio_model}")
        return self.model.encode_examples(sequences)

    def require_audio(self, cache: EmbeddingCache) -> None:
        """Refuse a cache of another audio model than the one trained with."""
        mine, theirs = self.audio, cache.info
        if (mine.audio_model, mine.weights_sha256, mine.embed_dim) != (theirs.audio_model, theirs.weights_sha256, theirs.embed_dim):
            raise AmrError(
                f"{cache.path}: holds embeddings of {theirs.audio_model} (weights sha256 {theirs.weights_sha256[:12]}, "
                f"{theirs.embed_dim} dims), but {self.path} was trained on {mine.audio_model} "
                f"({mine.weights_sha256[:12]}, {mine.embed_dim} dims); extract the collection with that model"
            )


def load_checkpoint(path: Path, text: TextEncoder | None = None) -> TrainedRetriever:
    """The best model of a checkpoint directory, ready to encode. ``text``: the
    already loaded text encoder it names, to save loading it again (not modified)."""
    path = Path(path)
    config = read_config(path)
    if not (path / MODEL).exists():
        raise AmrError(f"{path}: no {MODEL} yet (training has not completed an epoch)")
    model = build_model(config, path, text)
    tensors, _ = _load_tensors(path / MODEL)
    load_model_tensors(model, tensors, path / MODEL)
    model.eval()
    return TrainedRetriever(path, model, audio_info(config), fingerprint(path))


def _auto_tags(cache: EmbeddingCache, i: int, k: int) -> str:
    from amr.mobilenet import audioset_class_names

    names = audioset_class_names()
    top = np.argsort(-cache.tags[i], kind="stable")[:k]
    return " ".join(names[c] for c in top)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AmrError(f"{path}: not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT or metadata.get("version") != str(VERSION):
        raise AmrError(f"{path}: not an amr checkpoint file of version {VERSION}")
    return tensors, metadata


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
