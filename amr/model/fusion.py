"""The fusion modes and where a trained model starts (Init): light enums that
the options (amr.config), the CLI, the model, checkpoints, retrievers,
indexes and evaluation share.

A fusion mode says which sources an item vector is made of; how they meet,
and which tokens it adds to the audio transformer, is its head's (amr.model.heads).
Adding a mode means a member here, a head in amr.model.heads, and a test.
"""

from __future__ import annotations

from enum import StrEnum


class Fusion(StrEnum):
    none = "none"  # audio only
    metadata = "metadata"  # metadata only
    late = "late"  # audio and metadata vectors summed
    mid = "mid"  # the metadata joins the audio transformer as a token

    @property
    def uses_audio(self) -> bool:
        return self is not Fusion.metadata

    @property
    def uses_metadata(self) -> bool:
        return self is not Fusion.none

    def parts(self, dim: int) -> list[tuple[str, int]]:
        """The named parts of this mode's vectors, each ``dim`` wide."""
        return [(name, dim) for name, used in (("audio", self.uses_audio), ("metadata", self.uses_metadata)) if used]


class Init(StrEnum):
    """Where a trained model starts."""

    zero_shot = "zero-shot"  # scores exactly as the zero-shot hybrid before the first step
    random = "random"  # the paper's model, every projection learned from scratch
