"""amr: language-based audio retrieval with metadata (Primus and Widmer, 2024).

The Python API's front door: each stage of the `amr` command as a function of
its input files and options, and the few types a caller needs::

    import amr

    sounds = amr.load_dataset(Path("sounds"))                   # items: audio, metadata, captions
    amr.extract(sounds.items, cache, amr.resolve_weights("mn04_as"))
    amr.build_index(amr.ZeroShotRetriever(), [cache], index)    # or amr.load_retriever(...) of a checkpoint
    for result in amr.run_queries(amr.open_searcher(index), [amr.QueryInput("1", "a dog barking")]):
        ...

Each name is imported from its module on first use (PEP 562), so that
``import amr`` (and the CLI, which imports amr's light modules) loads neither
torch nor numpy until a stage runs. The packages are named for what they hold
(amr.extraction, amr.training, amr.server, ...), the functions for what they
do, so a stage function and its package never share a name. The modules
themselves are listed in the README's code map.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    # the stages, in pipeline order
    "load_dataset": "amr.datasets",
    "load_queries": "amr.datasets",
    "resolve_weights": "amr.audio.weights",
    "extract": "amr.extraction",
    "train": "amr.training",
    "build_index": "amr.index.build",
    "open_searcher": "amr.query",
    "run_queries": "amr.query",
    "serve": "amr.server.app",
    "evaluate_models": "amr.evaluate",
    # the types a caller passes or gets back
    "Item": "amr.items",
    "Query": "amr.items",
    "QueryInput": "amr.results",
    "Result": "amr.results",
    "ModelConfig": "amr.config",
    "TrainConfig": "amr.config",
    "ZeroShotConfig": "amr.config",
    "ZeroShotRetriever": "amr.model.zeroshot",
    "load_retriever": "amr.model.retrievers",
    "open_index": "amr.index.reader",
    "AmrError": "amr.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'amr' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from amr.audio.weights import resolve_weights
    from amr.config import ModelConfig, TrainConfig, ZeroShotConfig
    from amr.datasets import load_dataset, load_queries
    from amr.errors import AmrError
    from amr.evaluate import evaluate_models
    from amr.extraction import extract
    from amr.index.build import build_index
    from amr.index.reader import open_index
    from amr.items import Item, Query
    from amr.model.retrievers import load_retriever
    from amr.model.zeroshot import ZeroShotRetriever
    from amr.query import open_searcher, run_queries
    from amr.results import QueryInput, Result
    from amr.server.app import serve
    from amr.training import train
