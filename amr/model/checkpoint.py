"""The checkpoint format, defined here only (``amr-checkpoint``, version 1).

A checkpoint is a directory::

    config.json         format, version, amr version; "model": every ModelConfig
                        option; "audio": the CacheInfo of the caches it was
                        trained on (audio model, weights sha256, embedding size);
                        "text": the text encoder's name or directory, fingerprint
                        and whether its weights are stored; "training": the
                        TrainConfig; "best": epoch and validation mAP@10
    model.safetensors   the kept weights (the best epoch's, interpolated with the
                        start; no pickle). A frozen text
                        encoder is not stored: it is rebuilt from its name and
                        refused if its fingerprint differs
    log.jsonl           one JSON object per completed epoch (epoch 0: before training)
    state.safetensors   the last completed epoch, to resume training: weights,
                        optimizer and scheduler state, epoch, history
    start.safetensors   the weights training started from (from zero-shot), which
                        the kept model is interpolated with (amr.training)

Every file is written to a temporary name and renamed into place, so a killed
run leaves the previous version intact.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from amr import __version__
from amr.audio.audioset import with_machine_tags
from amr.cache import CacheInfo, EmbeddingCache, Segment
from amr.config import TrainConfig
from amr.errors import AmrError
from amr.files import atomic_write, sha256_files
from amr.model.model import CAPTIONS, ModelConfig, RetrievalModel, item_metadata
from amr.model.text import TextEncoder

FORMAT = "amr-checkpoint"
VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
STATE = "state.safetensors"
START = "start.safetensors"
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
    atomic_write(directory / CONFIG, json.dumps(config, indent=2) + "\n")


def checkpoint_spec(path: Path) -> dict[str, Any]:
    """What amr.model.retrievers.load_retriever rebuilds a checkpoint's retriever from."""
    return {"kind": "trained", "path": str(Path(path).resolve())}


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise AmrError(f"{directory}: not a checkpoint (no {CONFIG})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AmrError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise AmrError(f"{path}: cannot read it ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AmrError(f"{path}: not an amr checkpoint")
    if config.get("version") != VERSION:
        raise AmrError(f"{path}: checkpoint format version {config.get('version')}, this amr reads version {VERSION}")
    missing = {"model", "audio", "text", "training"} - set(config)
    if missing:
        raise AmrError(f"{path}: incomplete checkpoint config, no {', '.join(sorted(missing))}")
    _require_known(path, "", config, _SECTIONS)
    _require_known(path, "audio", config["audio"], {f.name for f in fields(CacheInfo)})
    _require_known(path, "text", config["text"], set(_TEXT))
    for name, kind in _TEXT.items():
        value = config["text"].get(name)
        if not isinstance(value, kind):
            raise AmrError(f"{path}: 'text' {name} must be {kind.__name__}, got {value!r}; the checkpoint is damaged")
    if config.get("best") is not None:
        _require_known(path, "best", config["best"], {"epoch", "val_map10", "interpolation"})
    _require_known(path, "training", config["training"], {f.name for f in fields(TrainConfig)})
    try:
        TrainConfig(**config["training"])
    except (AmrError, TypeError, ValueError) as e:
        raise AmrError(f"{path}: 'training' {e}") from None
    return config


_SECTIONS = {"format", "version", "amr_version", "model", "audio", "text", "training", "best"}
_TEXT = {"name": str, "fingerprint": str, "dim": int, "weights_stored": bool}  # config.json's "text"


def _require_known(path: Path, section: str, value: Any, known: set[str]) -> None:
    """``value`` (the config's ``section``, "" for the whole) must be an object of only ``known`` keys."""
    where = f"'{section}'" if section else "the config"
    if not isinstance(value, dict):
        raise AmrError(f"{path}: {where} is {type(value).__name__}, not an object; the checkpoint is damaged")
    unknown = sorted(set(value) - known)
    if unknown:
        raise AmrError(f"{path}: unknown key(s) {', '.join(unknown)} in {where}; this amr knows {', '.join(sorted(known))}")


def model_config(config: dict[str, Any], path: Path | None = None) -> ModelConfig:
    """The ModelConfig a config.json describes; an unknown or missing option is
    refused with a message naming the file."""
    where = f"{path / CONFIG}: " if path is not None else ""
    options = config.get("model")
    if not isinstance(options, dict):
        raise AmrError(f"{where}'model' is not an object of model options")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AmrError(f"{where}unknown model option(s) {', '.join(unknown)}; this amr knows {', '.join(sorted(known))}")
    try:
        return ModelConfig(**options)
    except AmrError as e:
        raise AmrError(f"{where}{e}") from None


def audio_info(config: dict[str, Any], path: Path | None = None) -> CacheInfo:
    try:
        # fields added later (with defaults) may be absent from an older checkpoint's config
        return CacheInfo(**{f.name: config["audio"][f.name] for f in fields(CacheInfo) if f.name in config["audio"]})
    except (KeyError, TypeError) as e:
        where = f"{path / CONFIG}: " if path is not None else ""
        raise AmrError(f"{where}'audio' lacks {e} (the cache description); the checkpoint is damaged") from None


def build_model(config: dict[str, Any], path: Path, text: TextEncoder | None = None) -> RetrievalModel:
    """The model a config describes, with the pretrained text encoder it names
    (refused when its fingerprint differs from the one trained with); see
    ``own_encoder`` for ``text``."""
    options = model_config(config, path)
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
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not (frozen and k.startswith(_TEXT_PREFIX))}


def load_model_tensors(model: RetrievalModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load stored weights; everything must match exactly (a frozen text
    encoder's weights are the only ones allowed to be absent)."""
    _require_dtypes(model, tensors, path)
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # tensors of other shapes
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else str(e))
        raise AmrError(f"{path}: weights do not match the model in {CONFIG} ({detail})") from None
    missing = [k for k in result.missing_keys if not (model.config.freeze_text and k.startswith(_TEXT_PREFIX))]
    if missing or result.unexpected_keys:
        raise AmrError(
            f"{path}: weights do not match the model in {CONFIG} (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def _require_dtypes(model: RetrievalModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse stored tensors of another type than the model's (load_state_dict would cast them: float weights stored as int64 truncated)."""
    own = model.state_dict()
    for name, tensor in tensors.items():
        if name in own and tensor.dtype != own[name].dtype:
            raise AmrError(f"{path}: tensor {name} is {tensor.dtype}, the model's is {own[name].dtype}; the checkpoint is damaged")


def save_model(directory: Path, model: RetrievalModel) -> None:
    _save_tensors(directory / MODEL, model_tensors(model), {"format": FORMAT, "version": str(VERSION)})


def save_start(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The weights training started from (the zero-shot model), which the kept model interpolates with."""
    _save_tensors(
        directory / START, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {"format": FORMAT, "version": str(VERSION)}
    )


def load_start(directory: Path, model: RetrievalModel) -> dict[str, torch.Tensor]:
    tensors, _ = _load_tensors(Path(directory) / START)
    _require_dtypes(model, tensors, Path(directory) / START)
    return {k: v.to(model.device) for k, v in tensors.items()}


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
                tensors[f"optimizer.{param}.{name}"] = value.detach().cpu().contiguous()
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
    atomic_write(directory / LOG, "".join(json.dumps(h) + "\n" for h in history))


def fingerprint(directory: Path) -> str:
    """sha256 of config.json and model.safetensors: identifies the trained model."""
    return sha256_files([Path(directory) / CONFIG, Path(directory) / MODEL])


def configuration(config: dict[str, Any]) -> str:
    """Identifies a run's whole configuration except its seed (and where it was
    written): runs that share it are repetitions, which `amr evaluate` averages."""
    training = {k: v for k, v in config["training"].items() if k != "seed"}
    described = {"model": config["model"], "audio": config["audio"], "text": config["text"], "training": training}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class TrainedRetriever:
    """A trained checkpoint as a Retriever (see amr.model.retrievers)."""

    kind = "trained"

    def __init__(self, path: Path, model: RetrievalModel, audio: CacheInfo, fingerprint: str, configuration: str):
        self.path = Path(path)
        self.model = model
        self.audio = audio
        self.fingerprint = fingerprint
        self.configuration = configuration
        self.fusion = model.config.fusion
        self.parts = model.parts

    @property
    def spec(self) -> dict[str, Any]:
        return checkpoint_spec(self.path)

    @property
    def captions_as_metadata(self) -> bool:
        """Trained in Clotho's full-sentence setting: an item's metadata is one of its captions."""
        return self.model.config.uses_metadata and self.model.config.metadata == (CAPTIONS,)

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
            metadata = [item_metadata(with_machine_tags(cache.items[i], cache.tags[i], auto_tags), config.metadata) for i in indices]
        return self.encode_items_with_metadata(cache, indices, metadata)

    def encode_segments(self, cache: EmbeddingCache, index: int, auto_tags: int = 0) -> np.ndarray:
        return self.encode_spans(cache, index, cache.segments(index), auto_tags)

    def encode_spans(self, cache: EmbeddingCache, index: int, segments: Sequence[Segment], auto_tags: int = 0) -> np.ndarray:
        """Each segment's frames and tags through the item tower, with the item's metadata."""
        self.require_audio(cache)
        config = self.model.config
        metadata = None
        if config.uses_metadata:
            metadata = [item_metadata(with_machine_tags(cache.items[index], cache.tags[index], auto_tags), config.metadata)] * len(segments)
        sequence = cache.sequence(index)
        sequences = [sequence[s.start : s.end] for s in segments] if config.uses_audio else None
        return self.model.encode_items(sequences, np.stack([s.tags for s in segments]), metadata)

    def encode_items_with_metadata(self, cache: EmbeddingCache, indices: Sequence[int], metadata: list[str | None] | None) -> np.ndarray:
        """Vectors of the cache's items ``indices`` with the metadata texts given (None: no metadata)."""
        indices = list(indices)
        sequences = [cache.sequence(i) for i in indices] if self.model.config.uses_audio else None
        return self.model.encode_items(sequences, cache.tags[indices], metadata)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_queries(texts)

    def query_side(self) -> tuple[TextEncoder, str, Callable[[torch.Tensor], torch.Tensor]]:
        """The (query) text encoder, its pooling and the map from pooled embeddings
        to query vectors that encode_queries runs (for amr.model.query_encoder)."""
        return self.model.text, self.model.config.text_pooling, self.model.query_vectors

    def encode_examples(self, sequences: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
        if not self.model.config.uses_audio:
            raise AmrError(f"{self.path}: a metadata-only model (fusion 'metadata') cannot search by audio example")
        for s in sequences:
            if s.ndim != 2 or s.shape[1] != self.audio.embed_dim:
                raise AmrError(
                    f"an example of shape {s.shape} is not a ({self.audio.embed_dim}-dim) frame sequence of {self.audio.audio_model}"
                )
        return self.model.encode_examples(sequences, tags)

    def require_audio(self, cache: EmbeddingCache) -> None:
        """Refuse a cache of another audio model than the one trained with."""
        self.audio.require_compatible(
            cache.info, f"{cache.path}:", f"but {self.path} was trained on", "extract the collection with that model"
        )


def load_checkpoint(path: Path, text: TextEncoder | None = None, device: torch.device | str = "cpu") -> TrainedRetriever:
    """The best model of a checkpoint directory, on ``device``, ready to encode.
    ``text``: the already loaded text encoder it names, to save loading it
    again (not modified)."""
    path = Path(path)
    config = read_config(path)
    if not (path / MODEL).exists():
        raise AmrError(f"{path}: no {MODEL} yet (training has not completed an epoch)")
    model = build_model(config, path, text)
    tensors, _ = _load_tensors(path / MODEL)
    load_model_tensors(model, tensors, path / MODEL)
    model.to(device).eval()
    return TrainedRetriever(path, model, audio_info(config, path), fingerprint(path), configuration(config))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    # serialised in memory and written as bytes: a failed write (a full disk) is then an OSError naming the file
    atomic_write(path, save(tensors, metadata=metadata))


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
