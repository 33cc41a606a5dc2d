"""The options of the stages and the vocabularies of the CLI's choices, importing nothing heavy.

`amr --help` shows these defaults, and every command's options are built
from them when `amr.cli` is imported: so they live here, apart from the
torch, numpy and FAISS code that uses them (amr.model.model, amr.training,
amr.model.zeroshot, amr.index.build, amr.server.app re-export what they use). The other
vocabularies live in light modules of their own concern: devices in
amr.devices, splits in amr.items, fusion modes in amr.model.fusion, output
formats in amr.results, kinds of approximate index in amr.index.kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum

from amr.audio.audioset import NUM_CLASSES
from amr.errors import AmrError
from amr.items import METADATA_FIELDS
from amr.model.fusion import Fusion, Init
from amr.model.text_input import DEFAULT_TEXT_MODEL, POOLINGS

DEFAULT_WEIGHTS = "mn04_as"  # the audio model `amr extract` embeds with unless told otherwise (amr.audio.weights)
# The longest clip a query by example may be (seconds of decoded audio, whatever the file's size: a
# FLAC of hours of silence is small). Its embedding is a few MB and a second or two of CPU time.
MAX_EXAMPLE_SECONDS = 300.0
LAYOUT_NAMES = ("generic", "clotho", "audiocaps", "wavcaps", "folder")  # dataset layouts (amr.datasets), in detection order
LayoutName = StrEnum("LayoutName", {name: name for name in LAYOUT_NAMES})
BY_FIELDS = ("split", "has_metadata", *(f"has_{name}" for name in METADATA_FIELDS))  # `amr evaluate --by` breakdowns
By = StrEnum("By", {name: name for name in BY_FIELDS})


class CategorizeFormat(StrEnum):
    """How `amr categorize` writes its suggestions (amr.categorize.write_results)."""

    jsonl = "jsonl"
    csv = "csv"
    table = "table"


class CategorizeSource(StrEnum):
    """What `amr categorize --by` scores categories from: audio and metadata fused, or one of them."""

    fused = "fused"
    audio = "audio"
    metadata = "metadata"


CAPTIONS = "captions"  # the metadata "field" of Clotho's full-sentence setting

# `amr serve` (amr.server.app): where it listens unless told otherwise (loopback: this machine only), and
# the largest clip it accepts for query by example.
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
UPLOAD_LIMIT = 64 << 20  # bytes: about 6 minutes of 16-bit 44.1 kHz stereo WAV


# --- the model (amr.model.model) -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model (the checkpoint stores it).

    Defaults and why: a stack of 2 pre-norm layers of width 128 with 4 heads,
    feed-forward 512 (4 x width) and residual dropout 0.1. One `amr train
    --freeze-text` epoch on Clotho (19,195 pairs of 47-94 frames) must fit in
    a minute on two CPU cores, and the audio tower is nearly all of that time.
    Width 256 costs about twice as much per step; on sfx-dev's val split width
    128 x 2 layers matched 256 x 2 and 256 x 1 within seed noise.
    ``init`` zero-shot (see amr.model.heads) makes the retrieval space the text
    encoder's; random makes it ``width`` wide. ``text_pooling`` is the text
    model's own ("" until training fills it in). ``metadata`` lists item fields
    (amr.items.METADATA_FIELDS) or is ("captions",) for Clotho's
    full-sentence setting. ``audio_weight`` and ``metadata_weight`` are the
    zero-shot weights a zero-shot start begins with.
    """

    fusion: Fusion = Fusion.late
    init: Init = Init.zero_shot
    metadata: tuple[str, ...] = METADATA_FIELDS
    text_model: str = DEFAULT_TEXT_MODEL
    text_pooling: str = ""
    freeze_text: bool = False
    separate_text_encoders: bool = False
    width: int = 128
    depth: int = 2
    heads: int = 4
    ff: int = 512
    dropout: float = 0.1
    audio_weight: float = 1.0
    metadata_weight: float = 1.0
    audio_dim: int = 0  # the cache's embedding size; 0 until training fills it in
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        try:
            object.__setattr__(self, "fusion", Fusion(self.fusion))
        except ValueError:
            raise AmrError(f"unknown fusion {self.fusion!r}; expected one of {', '.join(f.value for f in Fusion)}") from None
        try:
            object.__setattr__(self, "init", Init(self.init))
        except ValueError:
            raise AmrError(f"unknown init {self.init!r}; expected one of {', '.join(i.value for i in Init)}") from None
        object.__setattr__(self, "metadata", tuple(self.metadata))
        known = (*METADATA_FIELDS, CAPTIONS)
        if not self.metadata or any(f not in known for f in self.metadata):
            raise AmrError(f"metadata fields {','.join(map(str, self.metadata))!r}: expected some of {', '.join(known)}")
        if CAPTIONS in self.metadata and len(self.metadata) > 1:
            raise AmrError("metadata 'captions' (Clotho's full-sentence setting) cannot be combined with other fields")
        if self.text_pooling not in ("", *POOLINGS):
            raise AmrError(f"unknown text pooling {self.text_pooling!r}; expected one of {', '.join(POOLINGS)}")
        for name in ("width", "depth", "heads", "ff"):
            if getattr(self, name) < 1:
                raise AmrError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.width % 2:
            raise AmrError(f"width {self.width} must be even (sinusoidal positions come in sine/cosine pairs)")
        if self.width % self.heads:
            raise AmrError(f"width {self.width} is not a multiple of heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise AmrError(f"dropout {self.dropout} is not in [0, 1)")
        total = self.audio_weight + self.metadata_weight
        if min(self.audio_weight, self.metadata_weight) < 0 or total == 0 or not math.isfinite(total):
            raise AmrError("zero-shot weights must be finite, non-negative and not both zero")
        if self.freeze_text and self.separate_text_encoders:
            raise AmrError("separate text encoders only differ when fine-tuned: drop --freeze-text or --separate-text-encoders")

    @property
    def uses_audio(self) -> bool:
        return self.fusion.uses_audio

    @property
    def uses_metadata(self) -> bool:
        return self.fusion.uses_metadata


def _check_type(name: str, value: object, annotation: str) -> None:
    """Refuse a value of the wrong JSON type (a config.json edited by hand: ``"depth": "two"``)."""
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(annotation)
    if expected is None:
        return
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        raise AmrError(f"model option {name} must be {annotation}, got {value!r}")


# --- training (amr.training) -----------------------------------------------------------------


class Validation(StrEnum):
    """What the best epoch is chosen on."""

    split = "split"  # the val split (or a fixed tenth of train without one)
    concepts = "concepts"  # train items whose captions share no word with the rest of train


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the checkpoint stores it; a resumed run must match it).

    Defaults: the paper's batch 32, 25 epochs, one warm-up epoch and NT-Xent
    temperature 0.05; learning rate 5e-4 for the new layers (better than
    1e-4, 2e-4 and 1e-3 on sfx-dev's val split), and 2e-5 for the pretrained
    text encoder (the usual BERT fine-tuning rate); weight decay 0.01 on the
    new layers, toward the zero-shot start when the model starts there
    (ModelConfig.init's default); metadata dropout 0.15 (that share of the
    pairs trains without its metadata, the case of items that have none); the
    kept model halfway between the start and the trained weights
    (``interpolation`` 0.5, see amr.training).
    """

    caches: tuple[str, ...] = ()
    epochs: int = 25
    batch_size: int = 32
    lr: float = 5e-4
    text_lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    temperature: float = 0.05
    metadata_dropout: float = 0.15
    validation: Validation = Validation.split
    interpolation: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "caches", tuple(str(c) for c in self.caches))
        try:
            object.__setattr__(self, "validation", Validation(self.validation))
        except ValueError:
            raise AmrError(f"unknown validation {self.validation!r}; expected one of {', '.join(v.value for v in Validation)}") from None
        for name in ("epochs", "batch_size", "warmup_epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AmrError(f"training option {name} must be an integer, got {value!r}")
        for name in ("lr", "text_lr", "weight_decay", "temperature", "metadata_dropout", "interpolation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise AmrError(f"training option {name} must be a finite number >= 0, got {value!r}")
        if self.temperature == 0:
            raise AmrError("training option temperature must be above 0")
        if self.epochs < 1 or self.batch_size < 2:
            raise AmrError(f"need at least 1 epoch and a batch of 2, got {self.epochs} epochs, batch {self.batch_size}")
        if not 0 <= self.metadata_dropout <= 1:
            raise AmrError(f"metadata dropout {self.metadata_dropout} is not a probability")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise AmrError(f"{self.warmup_epochs} warm-up epochs do not fit in {self.epochs} epochs")
        if not 0 <= self.interpolation <= 1:
            raise AmrError(f"interpolation {self.interpolation} is not in [0, 1] (0: the zero-shot start, 1: the trained model)")


# --- the zero-shot model (amr.model.zeroshot) ----------------------------------------------------


@dataclass(frozen=True)
class ZeroShotConfig:
    """``text_pooling`` "" means the text model's own (mean for all-MiniLM-L6-v2)."""

    text_model: str = DEFAULT_TEXT_MODEL
    audio_weight: float = 1.0
    metadata_weight: float = 1.0
    metadata_fields: tuple[str, ...] = METADATA_FIELDS
    descriptions: str | None = None  # JSON file: AudioSet class name → description (e.g. from the ontology)
    text_pooling: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))
        total = self.audio_weight + self.metadata_weight
        if min(self.audio_weight, self.metadata_weight) < 0 or total == 0 or not math.isfinite(total):
            raise AmrError("zero-shot weights must be finite, non-negative and not both zero")

    @property
    def fusion(self) -> Fusion:
        """late for both sources, none (audio only) or metadata (metadata only) when a weight is zero."""
        if self.metadata_weight == 0:
            return Fusion.none
        return Fusion.metadata if self.audio_weight == 0 else Fusion.late
