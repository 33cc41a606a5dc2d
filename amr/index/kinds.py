"""The kinds of approximate index, importing nothing heavy (the CLI builds `--ann-kind` from them).

Both propose candidates that exact scores re-rank (amr.index.search):

``ivf-sq8``  IVF over 8-bit scalar-quantised vectors, loaded into RAM: up to LARGE_LIMIT rows.
``ivf-pq``   IVF over product-quantised vectors whose inverted lists stay on
             disk (memory-mapped), beside vectors stored as float16: above it.
"""

from __future__ import annotations

from enum import StrEnum

# Up to this many rows exact search (one matrix product over N x D float32,
# memory-bound: ~7 ms per query at 1e5 rows of 512 dims on two cores,
# bench/query.py) leaves most of a 20 ms query for the text encoder; above it
# `amr index` builds an approximate index unless told otherwise.
EXACT_LIMIT = 50_000
# Above this many rows `amr index` builds an ivf-pq index (inverted lists on
# disk) instead of an ivf-sq8 one (in RAM): the RAM an index may take stays
# below LARGE_LIMIT x D bytes (768 MB at 768 dims) for any collection.
LARGE_LIMIT = 1_000_000
RECALL_TARGET = 0.97  # recall@10 the nprobe of an ivf-sq8 index is chosen for
PQ_RECALL_TARGET = 0.95  # recall@10 after re-ranking the nprobe and candidates of an ivf-pq index are chosen for


class AnnKind(StrEnum):
    """A kind of approximate index, as `--ann-kind` and the index's ``ann`` attribute name it."""

    ivf_sq8 = "ivf-sq8"
    ivf_pq = "ivf-pq"

    @property
    def on_disk(self) -> bool:
        """Whether its inverted lists stay on disk (and the index's vectors are float16)."""
        return self is AnnKind.ivf_pq

    @property
    def recall_target(self) -> float:
        """The recall@10 (after re-ranking) its settings are tuned for."""
        return PQ_RECALL_TARGET if self.on_disk else RECALL_TARGET

    @classmethod
    def fitting(cls, rows: int) -> AnnKind:
        """The kind for an index of ``rows`` live rows: in RAM up to LARGE_LIMIT, on disk above."""
        return cls.ivf_pq if rows > LARGE_LIMIT else cls.ivf_sq8
