"""The EfficientAT AudioSet checkpoints amr can embed audio with, and how a name becomes a file.

Each registry entry names its release file, its network dimensions, where
known its sha256, and the audio settings the checkpoint was trained with
(sample rate, log-mel front end, window length, model stride): preprocessing
travels with the weights, as in open_clip or whisper, so no other module
repeats these numbers. `resolve_weights` finds the file (an explicit path, then
$AMR_WEIGHTS_DIR, then the user cache, then a download into that cache), checks
its hash (or warns that it cannot), and reports the hash so that every cache
records what it was built with.

Hashes: mn04_as is the file in ../shared/weights (and the one other projects pin
for the same release asset); mn10_as is the digest several independent public
projects pin for `mn10_as_mAP_471.pt` of release v0.0.1 (19,708,753 bytes). For
the other entries no published digest was found: their files are hashed and
recorded, but not verified, and a warning says so.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.request import urlopen

import torch
from rich.progress import DownloadColumn, TransferSpeedColumn

from amr.audio.frontend import MelSettings
from amr.audio.mobilenet import BLOCKS, LAST_CONV_EXPANSION, NUM_CLASSES, TIME_STRIDE, MobileNetV3, ModelDims, embed_dim_for
from amr.config import DEFAULT_WEIGHTS
from amr.console import progress, warn
from amr.errors import AmrError
from amr.files import atomic_output, remember_sha256, sha256_file

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
WEIGHTS_DIR_ENV = "AMR_WEIGHTS_DIR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class AudioSettings:
    """What a checkpoint expects as input and gives as output, besides its tensors."""

    mel: MelSettings
    window_seconds: float  # clips are embedded in windows of this length (the training clips' length)
    model_stride: int  # mel frames per output frame

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.mel.sample_rate)

    @property
    def window_frames(self) -> int:
        """Mel frames of a full window (1000 for EfficientAT's 10 s)."""
        return self.mel.frames(self.window_samples)

    @property
    def frames_per_window(self) -> int:
        """Output frames of a full window (32 for EfficientAT's 10 s: 1000 mel frames at stride 32, rounded up)."""
        return math.ceil(self.window_frames / self.model_stride)

    @property
    def frame_rate(self) -> float:
        """Output frames per second (3.125 for EfficientAT)."""
        return self.mel.sample_rate / self.mel.hop_length / self.model_stride


# Every EfficientAT AudioSet release was trained on 10 s clips at 32 kHz through
# AugmentMelSTFT (eval settings below) and has MobileNetV3's 32x time stride.
EFFICIENTAT_AUDIO = AudioSettings(
    mel=MelSettings(
        sample_rate=32000,
        n_fft=1024,
        win_length=800,
        hop_length=320,
        n_mels=128,
        f_min=0.0,
        f_max=15000.0,
        preemphasis=0.97,
        log_offset=1e-5,
        norm_shift=4.5,  # EfficientAT's "fast normalisation": (log-mel + 4.5) / 5
        norm_scale=5.0,
    ),
    window_seconds=10.0,
    model_stride=TIME_STRIDE,
)


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    dims: ModelDims
    sha256: str | None = None
    audio: AudioSettings = EFFICIENTAT_AUDIO

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file


WEIGHTS: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry("mn01_as", "mn01_as_mAP_298.pt", ModelDims(0.1)),
        WeightsEntry("mn02_as", "mn02_as_mAP_378.pt", ModelDims(0.2)),
        WeightsEntry(
            "mn04_as",
            "mn04_as_mAP_432.pt",
            ModelDims(0.4),
            "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
        ),
        WeightsEntry("mn05_as", "mn05_as_mAP_443.pt", ModelDims(0.5)),
        WeightsEntry(
            "mn10_as",
            "mn10_as_mAP_471.pt",
            ModelDims(1.0),
            "0bd7dc2443af498c289a2e739f02ebb515d6aa3fd3ab9db539c86123ae368a4e",
        ),
        WeightsEntry("mn20_as", "mn20_as_mAP_478.pt", ModelDims(2.0)),
        WeightsEntry("mn30_as", "mn30_as_mAP_482.pt", ModelDims(3.0)),
        WeightsEntry("mn40_as", "mn40_as_mAP_484.pt", ModelDims(4.0)),
        WeightsEntry("mn40_as_ext", "mn40_as_ext_mAP_487.pt", ModelDims(4.0)),
    )
}


@dataclass(frozen=True)
class ResolvedWeights:
    name: str
    path: Path
    sha256: str  # of the file actually found
    width: float
    audio: AudioSettings = EFFICIENTAT_AUDIO

    @property
    def embed_dim(self) -> int:
        return embed_dim_for(self.width)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


def available_weights() -> list[str]:
    """The registry's model names, smallest first."""
    return list(WEIGHTS)


def resolve_weights(name: str | None = None, file: Path | None = None) -> ResolvedWeights:
    """Find (or download) the checkpoint for `name`, or describe the explicit `file`.

    With a file, the name is the given one or the registry entry whose file name
    matches, else the file's stem; the width comes from the entry, else from the
    checkpoint itself. A file that an entry with a known sha256 covers must match it.
    """
    if file is not None:
        return _resolve_file(name, Path(file))
    entry = _known(name or DEFAULT_WEIGHTS)
    for folder in _search_folders():
        path = folder / entry.file
        if path.is_file():
            advice = f"delete it, or replace it with {entry.url}"
            return ResolvedWeights(entry.name, path, _verified(path, entry, advice), entry.dims.width, entry.audio)
    path = cache_dir() / entry.file
    return ResolvedWeights(entry.name, path, _download(entry, path), entry.dims.width, entry.audio)


def load_audio_model(weights: ResolvedWeights) -> MobileNetV3:
    """The checkpoint as a MobileNetV3 in eval mode, every tensor loaded (strict)."""
    state = _load_state_dict(weights.path)
    model = MobileNetV3(weights.width)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise AmrError(f"{weights.path}: not an EfficientAT MobileNetV3 checkpoint of width {weights.width} ({first})") from e
    return model.eval()


def cache_dir() -> Path:
    """Where downloaded weights go: $XDG_CACHE_HOME/amr, else ~/.cache/amr."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amr"


def _known(name: str) -> WeightsEntry:
    if name not in WEIGHTS:
        raise AmrError(f"unknown audio model {name!r}; known: {', '.join(available_weights())}")
    return WEIGHTS[name]


def _search_folders() -> list[Path]:
    folders = [cache_dir()]
    if os.environ.get(WEIGHTS_DIR_ENV):
        folders.insert(0, Path(os.environ[WEIGHTS_DIR_ENV]))
    return folders


def _resolve_file(name: str | None, path: Path) -> ResolvedWeights:
    if not path.is_file():
        raise AmrError(f"{path}: no such weights file")
    by_file = next((e for e in WEIGHTS.values() if e.file == path.name), None)
    by_name = WEIGHTS.get(name) if name else None
    if by_name and by_file and by_name != by_file:
        raise AmrError(f"{path}: this is the {by_file.name} checkpoint, not {name}; pass the matching model name")
    entry = by_name or by_file
    if entry is None:
        return ResolvedWeights(name or path.stem, path, sha256_file(path), _width_from_checkpoint(path))
    advice = f"download it again from {entry.url}" if by_file else "pass its own model name, or none to infer it"
    return ResolvedWeights(entry.name, path, _verified(path, entry, advice), entry.dims.width, entry.audio)


def _verified(path: Path, entry: WeightsEntry, advice: str) -> str:
    digest = sha256_file(path)
    if entry.sha256 is None:
        _warn_unverified(str(path), entry.file, digest)
    elif digest != entry.sha256:
        raise AmrError(f"{path}: sha256 {digest} is not that of {entry.file} ({entry.sha256}); {advice}")
    return digest


@cache
def _warn_unverified(path: str, file: str, digest: str) -> None:
    """Once per file and content in a process: no published hash to compare with."""
    warn(f"{path}: cannot verify this file: amr knows no sha256 of {file}; using it as it is (sha256 {digest})")


def _width_from_checkpoint(path: Path) -> float:
    """The width whose last conv has as many channels as the checkpoint's features.16."""
    channels = _load_state_dict(path).get("features.16.0.weight")
    if channels is None:
        raise AmrError(f"{path}: not an EfficientAT MobileNetV3 checkpoint (no features.16.0.weight)")
    last = channels.shape[0]
    # embed_dim_for(width) = 6 * make_divisible(160 * width) == last for the released widths (0.1 ... 4.0)
    width = round(last / (LAST_CONV_EXPANSION * BLOCKS[-1].out), 4)
    if embed_dim_for(width) != last:
        raise AmrError(f"{path}: cannot tell the model width from {last} channels in features.16")
    return width


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise AmrError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise AmrError(f"{path}: not a state dict (a {type(state).__name__})")
    return state


def _download(entry: WeightsEntry, path: Path) -> str:
    """Download to a temporary file beside `path`, check the hash, then rename into place."""
    hint = f"{entry.file} not found: download {entry.url} and pass --audio-weights FILE or put it in ${WEIGHTS_DIR_ENV}"
    digest = hashlib.sha256()
    try:
        with atomic_output(path) as part, open(part, "wb") as out, urlopen(entry.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress("{task.description}", DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
                task = bar.add_task(entry.file, total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            if entry.sha256 and digest.hexdigest() != entry.sha256:
                raise AmrError(f"{entry.url}: the download has sha256 {digest.hexdigest()}, expected {entry.sha256}; try again")
    except (OSError, http.client.HTTPException) as e:
        raise AmrError(f"{hint} ({e})") from e
    sha256 = digest.hexdigest()
    remember_sha256(path, sha256)
    if entry.sha256 is None:
        _warn_unverified(str(path), entry.file, sha256)
    return sha256
