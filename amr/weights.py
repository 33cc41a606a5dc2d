"""The EfficientAT AudioSet checkpoints amr can embed audio with, and how a name becomes a file.

Each registry entry names its release file, its network dimensions and, where
known, its sha256. `resolve_weights` finds the file (an explicit path, then
$AMR_WEIGHTS_DIR, then the user cache, then a download into that cache), checks
its hash, and reports the hash so that every cache records what it was built with.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import torch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from amr.errors import AmrError
from amr.mobilenet import BLOCKS, LAST_CONV_EXPANSION, MobileNetV3, ModelDims, make_divisible

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
WEIGHTS_DIR_ENV = "AMR_WEIGHTS_DIR"
DEFAULT_WEIGHTS = "mn04_as"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    dims: ModelDims
    sha256: str | None = None

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
        WeightsEntry("mn10_as", "mn10_as_mAP_471.pt", ModelDims(1.0)),
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
            return ResolvedWeights(entry.name, path, _verified(path, entry, advice), entry.dims.width)
    path = cache_dir() / entry.file
    return ResolvedWeights(entry.name, path, _download(entry, path), entry.dims.width)


def load_audio_model(weights: ResolvedWeights) -> MobileNetV3:
    """The checkpoint as a MobileNetV3 in eval mode, every tensor loaded (strict)."""
    state = _load_state_dict(weights.path)
    model = MobileNetV3(weights.width)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise AmrError(
            f"{weights.path}: not an EfficientAT MobileNetV3 checkpoint of width {weights.width} ({first})"
        ) from e
    return model.eval()


def cache_dir() -> Path:
    """Where downloaded weights go: $XDG_CACHE_HOME/amr, else ~/.cache/amr."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amr"


def file_sha256(path: Path) -> str:
    """Streaming sha256, remembered per (path, size, mtime) for the life of the process."""
    key = _hash_key(path)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


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
        return ResolvedWeights(name or path.stem, path, file_sha256(path), _width_from_checkpoint(path))
    advice = f"download it again from {entry.url}" if by_file else "pass its own model name, or none to infer it"
    return ResolvedWeights(entry.name, path, _verified(path, entry, advice), entry.dims.width)


def _verified(path: Path, entry: WeightsEntry, advice: str) -> str:
    digest = file_sha256(path)
    if entry.sha256 and digest != entry.sha256:
        raise AmrError(f"{path}: sha256 {digest} is not that of {entry.file} ({entry.sha256}); {advice}")
    return digest


def _width_from_checkpoint(path: Path) -> float:
    """The width whose last conv has as many channels as the checkpoint's features.16."""
    channels = _load_state_dict(path).get("features.16.0.weight")
    if channels is None:
        raise AmrError(f"{path}: not an EfficientAT MobileNetV3 checkpoint (no features.16.0.weight)")
    last = channels.shape[0]
    # make_divisible(160 * width) * 6 == last for the released widths (0.1 ... 4.0)
    width = round(last / (LAST_CONV_EXPANSION * BLOCKS[-1].out), 4)
    if LAST_CONV_EXPANSION * make_divisible(BLOCKS[-1].out * width) != last:
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
    hint = (
        f"{entry.file} not found: download {entry.url} and pass --audio-weights FILE "
        f"or put it in ${WEIGHTS_DIR_ENV}"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{entry.file}.", suffix=".part", delete=False)
    except OSError as e:
        raise AmrError(f"{hint} (cannot write to {path.parent}: {e})") from e
    part_path = Path(part.name)
    digest = hashlib.sha256()
    try:
        with part, urlopen(entry.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress() as progress:
                task = progress.add_task(entry.file, total=total)
                while chunk := response.read(_CHUNK):
                    part.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
    except (OSError, http.client.HTTPException) as e:
        part_path.unlink(missing_ok=True)
        raise AmrError(f"{hint} ({e})") from e
    sha256 = digest.hexdigest()
    if entry.sha256 and sha256 != entry.sha256:
        part_path.unlink(missing_ok=True)
        raise AmrError(f"{entry.url}: the download has sha256 {sha256}, expected {entry.sha256}; try again")
    os.replace(part_path, path)
    _HASHES[_hash_key(path)] = sha256
    return sha256


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
