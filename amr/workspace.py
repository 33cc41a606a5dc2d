"""Where stages leave their outputs so the next stage finds them without flags.

``amr extract data/clotho`` writes ``<workspace>/caches/clotho.mn04_as.h5`` (dataset,
audio model) and records it as the latest cache; ``amr train`` reads the latest
cache and records the latest checkpoint; ``amr index`` / ``amr query`` follow the same pointers. The
workspace is ``./amr-workspace`` unless ``--workspace`` or ``$AMR_WORKSPACE``
says otherwise. Every stage also takes its inputs as explicit paths.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from amr.console import warn
from amr.errors import AmrError
from amr.files import atomic_write

WORKSPACE_ENV = "AMR_WORKSPACE"
DEFAULT_WORKSPACE = Path("amr-workspace")

Kind = Literal["cache", "checkpoint", "index"]
_HINT: dict[str, str] = {
    "cache": "run `amr extract DATASET` first",
    "checkpoint": "run `amr train` first",
    "index": "run `amr index` first",
}


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: Path | None = None) -> Workspace:
        """The workspace named by the flag, else the environment, else the default."""
        if root is None:
            root = Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE)
        return cls(root)

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    def cache_path(self, dataset: str, audio_model: str) -> Path:
        """Where `amr extract` writes a dataset's cache by default."""
        return self.caches / f"{dataset}.{audio_model}.h5"

    def new_checkpoint_path(self, fusion: str) -> Path:
        """A fresh checkpoint directory for a run of ``fusion``, named by the time."""
        return self.checkpoints / f"{fusion}-{time.strftime('%Y%m%d-%H%M%S')}"

    def index_path(self, cache: Path, zero_shot: bool) -> Path:
        """Where `amr index` writes the index of a cache by default."""
        return self.indexes / f"{Path(cache).stem}{'.zero-shot' if zero_shot else ''}.h5"

    @property
    def _pointers(self) -> Path:
        return self.root / "latest.json"

    def _read_pointers(self) -> dict[str, str]:
        """What latest.json records: kind → path; a damaged file is one line naming it."""
        if not self._pointers.exists():
            return {}
        try:
            pointers = json.loads(self._pointers.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AmrError(f"{self._pointers}: not valid JSON ({e}); delete it and rerun the last stage") from e
        if not isinstance(pointers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pointers.items()):
            found = type(pointers).__name__
            raise AmrError(f"{self._pointers}: not an object of paths by kind ({found}); delete it and rerun the last stage")
        return pointers

    def latest(self, kind: Kind) -> Path:
        """The output the last run of a stage recorded, or a hint how to make one."""
        path = self._read_pointers().get(kind)
        if path is None:
            raise AmrError(f"no {kind} in workspace {self.root}: {_HINT[kind]}, or name one explicitly")
        resolved = Path(path)
        if not resolved.exists():
            raise AmrError(f"the latest {kind} recorded in {self._pointers} is gone: {resolved}")
        return resolved

    def evaluated(
        self, checkpoints: Sequence[Path], index_paths: Sequence[Path], caches: Sequence[Path], zero_shot: bool, bm25: bool
    ) -> tuple[list[Path], list[Path]]:
        """The checkpoints and caches `amr evaluate` scores: those given, else
        the latest checkpoint when no index and no baseline (``zero_shot``,
        ``bm25``) is asked for, and the latest cache unless only indexes are
        scored (on their own items: then no cache)."""
        checkpoints = list(checkpoints)
        if not checkpoints and not index_paths and not (zero_shot or bm25):
            checkpoints = [self.latest("checkpoint")]
        caches = list(caches)
        if not caches and (checkpoints or zero_shot or not index_paths):
            caches = [self.latest("cache")]
        return checkpoints, caches

    def set_latest(self, kind: Kind, path: Path) -> None:
        """Record ``path`` as the latest ``kind``; a damaged latest.json is replaced (with a warning),
        since the output of the stage that just ran is already written."""
        try:
            pointers = self._read_pointers()
        except AmrError as e:
            warn(f"{e}; replaced by a new one")
            pointers = {}
        pointers[kind] = str(Path(path).resolve())
        atomic_write(self._pointers, json.dumps(pointers, indent=2) + "\n")
