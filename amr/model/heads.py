"""The fusion heads: how a trained model turns an item's audio and metadata
into one vector and a query into one vector (one head per amr.model.fusion.Fusion).

Every head reduces an item to ONE vector and a query to ONE vector whose inner
product is the retrieval score, so an index ranks by a single inner product.
The vectors are concatenations of named parts (audio, metadata) of size D:

=========  ==========================  ===============================  ====================================
fusion     item                        query                            score
=========  ==========================  ===============================  ====================================
none       [â]                         [q̂]                              cos(q, a)
metadata   [m̂]                         [q̂]                              cos(q, m)
late       [αa; βm] / |αa + βm|        [q̂; q̂]                           cos(q, αa + βm)
mid        [αa'; βm'] / |αa' + βm'|    [w_a q_a; w_m q_m]               (α w_a q_a·a' + β w_m q_m·m') / |αa' + βm'|
=========  ==========================  ===============================  ====================================

(x̂ = x/|x|.) ``a`` is the clip's audio vector, ``m`` its metadata vector; in
``mid`` the metadata embedding joins the audio transformer as a token, and
``a'``, ``m'`` come from the transformed global and metadata tokens, while the
query gets two gated embedding units ``q_a``, ``q_m`` and query-dependent
weights ``(w_a, w_m)``.

**Where a model starts** (amr.model.fusion.Init). From *zero-shot* (the default) the
retrieval space is the text encoder's own (D = its width) and every learned
map is a correction that starts at zero, added to the zero-shot value:

* audio: ``a = unit(unit(P·E) + A·h)`` — P the tagger's 527 class probabilities, E
  the text embeddings of the class names (the label–text bridge, learned from
  there), h the audio transformer's global token and A a linear map starting
  at zero;
* metadata and queries: ``unit(x̂ + R·x̂)``, R starting at zero; the gated units
  of ``mid`` likewise (``unit(q̂ + GEU(q̂))``, the unit's first layer at zero).
  Every start is a unit vector, so a correction works at one scale whatever
  the tag mass of a clip or the norm of a text embedding;
* ``α``, ``β`` start at the zero-shot weights, ``w_a = w_m = 1``; an item
  without metadata uses a learned metadata vector that starts at zero.

So before the first step every item and query scores exactly as ``amr index
--zero-shot`` scores them. From *random* (``--init random``), the paper's
model: D is the transformer width, every map is learned from scratch, α = β =
1, ``late`` sums unnormalised a and m, and ``mid`` scores ``w_a cos(q_a, a') +
w_m cos(q_m, m')`` with ``w`` a softmax (item and query scaled by 1/√2 and √2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.fusion import Fusion

NO_METADATA_SCALE = 0.02  # spread of a randomly initialised "no metadata" vector


@dataclass
class AudioBatch:
    """What an item's audio is made of: padded frames (B, T, C) with their
    lengths (B,), and the clip's tag probabilities (B, 527)."""

    frames: Tensor
    lengths: Tensor
    tags: Tensor


@dataclass
class MetadataBatch:
    """Text embeddings (B, t) of the items' metadata; rows where ``present``
    (B,) is False have none (their embedding row is ignored)."""

    embeddings: Tensor
    present: Tensor


class Correction(nn.Module):
    """``start + W x``: a learned linear map added to a starting value. From
    zero-shot W starts at zero, so the output starts as the start; from random
    there is no start and W is initialised as any linear layer."""

    def __init__(self, dim_in: int, dim_out: int, from_zero_shot: bool):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        if from_zero_shot:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, start: Tensor | None = None) -> Tensor:
        y = self.linear(x)
        return y if start is None else start + y


class GatedEmbeddingUnit(nn.Module):
    """Miech et al. (2018) without the final normalisation: Y = W1 x + b1;
    Y ∘ σ(W2 Y + b2). From zero-shot W1 and b1 start at zero (output zero)."""

    def __init__(self, dim_in: int, dim_out: int, from_zero_shot: bool):
        super().__init__()
        self.linear = Correction(dim_in, dim_out, from_zero_shot)
        self.gate = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return y * torch.sigmoid(self.gate(y))


class AudioVector(nn.Module):
    """A clip's audio vector from its transformed global token ``h`` (width W)
    and tag probabilities: ``unit(P·E) + A·h`` from zero-shot (E the class-name
    embeddings, set by `start_from_zero_shot`), ``A·h`` from random."""

    def __init__(self, width: int, dim: int, num_classes: int, from_zero_shot: bool):
        super().__init__()
        self.correction = Correction(width, dim, from_zero_shot)
        self.class_embeddings = nn.Parameter(torch.zeros(num_classes, dim)) if from_zero_shot else None

    def forward(self, token: Tensor, tags: Tensor) -> Tensor:
        bridge = None if self.class_embeddings is None else F.normalize(tags @ self.class_embeddings, dim=-1)
        return self.correction(token, bridge)


def no_metadata_start(dim: int, from_zero_shot: bool) -> nn.Parameter:
    """The learned stand-in for missing metadata: zero from zero-shot (an item
    without metadata then scores by its audio alone, as in zero-shot), small
    and random from random."""
    return nn.Parameter(torch.zeros(dim) if from_zero_shot else torch.randn(dim) * NO_METADATA_SCALE)


class Head(nn.Module):
    """What every fusion head shares: the retrieval space size ``dim``, α and β,
    and the rule for items without metadata."""

    fusion: Fusion
    extra_tokens = 0  # tokens the head adds to the audio transformer's input, after the global token

    def __init__(self, width: int, text_dim: int, num_classes: int, from_zero_shot: bool):
        super().__init__()
        self.from_zero_shot = from_zero_shot
        self.dim = text_dim if from_zero_shot else width
        # log α, log β: learned from zero-shot (set by start_from_zero_shot), fixed at 1 from random
        self.log_weights = nn.Parameter(torch.zeros(2), requires_grad=from_zero_shot)

    @property
    def parts(self) -> list[tuple[str, int]]:
        return self.fusion.parts(self.dim)

    def start_from_zero_shot(self, class_embeddings: Tensor, audio_weight: float, metadata_weight: float) -> None:
        """Set the zero-shot starting point: the bridge's class embeddings and α, β."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, AudioVector) and module.class_embeddings is not None:
                    module.class_embeddings.copy_(class_embeddings)
            self.log_weights.copy_(torch.log(torch.tensor([audio_weight, metadata_weight]).clamp(min=1e-6)))

    def text_input(self, x: Tensor) -> Tensor:
        """Text embeddings as a head takes them: from zero-shot unit length (a
        correction then works at the same scale whatever the encoder's norms;
        zero rows stay zero), from random as they are."""
        return F.normalize(x, dim=-1) if self.from_zero_shot else x

    def fuse(self, a: Tensor, m: Tensor) -> Tensor:
        """[αa; βm] / |αa + βm|: the item vector whose inner product with [q; q] is cos(q, αa + βm)."""
        alpha, beta = self.log_weights.exp()
        a, m = alpha * a, beta * m
        return torch.cat([a, m], 1) / (a + m).norm(dim=1, keepdim=True).clamp(min=1e-8)

    def metadata_vectors(self, projected: Tensor, present: Tensor, normalise: bool) -> Tensor:
        """Projected metadata rows (unit where ``normalise``); where absent, the
        learned no-metadata vector, never normalised (it starts at zero)."""
        if normalise:
            projected = F.normalize(projected, dim=-1)
        return torch.where(present[:, None], projected, self.no_metadata.expand_as(projected))

    def items(self, audio: AudioBatch | None, metadata: MetadataBatch | None, tower: nn.Module | None) -> Tensor:
        raise NotImplementedError

    def queries(self, q: Tensor) -> Tensor:
        raise NotImplementedError

    def examples(self, audio: AudioBatch, tower: nn.Module) -> Tensor:
        """Unit audio vectors in the audio part, zeros elsewhere (query by example)."""
        raise NotImplementedError


class AudioOnly(Head):
    fusion = Fusion.none

    def __init__(self, width: int, text_dim: int, num_classes: int, from_zero_shot: bool):
        super().__init__(width, text_dim, num_classes, from_zero_shot)
        self.audio = AudioVector(width, self.dim, num_classes, from_zero_shot)
        self.query = Correction(text_dim, self.dim, from_zero_shot)

    def items(self, audio: AudioBatch | None, metadata: MetadataBatch | None, tower: nn.Module | None) -> Tensor:
        return F.normalize(self.audio(tower(audio.frames, audio.lengths)[:, 0], audio.tags), dim=-1)

    def queries(self, q: Tensor) -> Tensor:
        q = self.text_input(q)
        return F.normalize(self.query(q, q if self.from_zero_shot else None), dim=-1)

    def examples(self, audio: AudioBatch, tower: nn.Module) -> Tensor:
        return self.items(audio, None, tower)


class MetadataOnly(Head):
    fusion = Fusion.metadata

    def __init__(self, width: int, text_dim: int, num_classes: int, from_zero_shot: bool):
        super().__init__(width, text_dim, num_classes, from_zero_shot)
        self.metadata = Correction(text_dim, self.dim, from_zero_shot)
        self.query = Correction(text_dim, self.dim, from_zero_shot)
        self.no_metadata = no_metadata_start(self.dim, from_zero_shot)

    def items(self, audio: AudioBatch | None, metadata: MetadataBatch | None, tower: nn.Module | None) -> Tensor:
        x = self.text_input(metadata.embeddings)
        return self.metadata_vectors(self.metadata(x, x if self.from_zero_shot else None), metadata.present, normalise=True)

    def queries(self, q: Tensor) -> Tensor:
        q = self.text_input(q)
        return F.normalize(self.query(q, q if self.from_zero_shot else None), dim=-1)

    def examples(self, audio: AudioBatch, tower: nn.Module) -> Tensor:
        raise ValueError("a metadata-only model has no audio tower")


class Late(Head):
    """Separate audio and metadata vectors, summed (see the module docstring)."""

    fusion = Fusion.late

    def __init__(self, width: int, text_dim: int, num_classes: int, from_zero_shot: bool):
        super().__init__(width, text_dim, num_classes, from_zero_shot)
        self.audio = AudioVector(width, self.dim, num_classes, from_zero_shot)
        self.metadata = Correction(text_dim, self.dim, from_zero_shot)
        self.query = Correction(text_dim, self.dim, from_zero_shot)
        self.no_metadata = no_metadata_start(self.dim, from_zero_shot)

    def audio_vectors(self, audio: AudioBatch, tower: nn.Module) -> Tensor:
        a = self.audio(tower(audio.frames, audio.lengths)[:, 0], audio.tags)
        return F.normalize(a, dim=-1) if self.from_zero_shot else a

    def items(self, audio: AudioBatch | None, metadata: MetadataBatch | None, tower: nn.Module | None) -> Tensor:
        x = self.text_input(metadata.embeddings)
        m = self.metadata(x, x if self.from_zero_shot else None)
        return self.fuse(self.audio_vectors(audio, tower), self.metadata_vectors(m, metadata.present, self.from_zero_shot))

    def queries(self, q: Tensor) -> Tensor:
        q = self.text_input(q)
        q = F.normalize(self.query(q, q if self.from_zero_shot else None), dim=-1)
        return torch.cat([q, q], 1)

    def examples(self, audio: AudioBatch, tower: nn.Module) -> Tensor:
        a = F.normalize(self.audio_vectors(audio, tower), dim=-1)
        return torch.cat([a, torch.zeros_like(a)], 1)


class Mid(Head):
    """The metadata as a token of the audio transformer (see the module docstring)."""

    fusion = Fusion.mid
    extra_tokens = 1  # the metadata token

    def __init__(self, width: int, text_dim: int, num_classes: int, from_zero_shot: bool):
        super().__init__(width, text_dim, num_classes, from_zero_shot)
        self.metadata_token = nn.Linear(text_dim, width)
        # the stand-in token of items without metadata (in the transformer's width)
        self.no_metadata_token = nn.Parameter(torch.randn(width) * NO_METADATA_SCALE)
        if from_zero_shot:  # the metadata vector of an item without metadata starts at zero, as in zero-shot
            self.no_metadata = no_metadata_start(self.dim, from_zero_shot)
        self.audio = AudioVector(width, self.dim, num_classes, from_zero_shot)
        self.metadata = Correction(width, self.dim, from_zero_shot)
        self.query_audio = GatedEmbeddingUnit(text_dim, self.dim, from_zero_shot)
        self.query_metadata = GatedEmbeddingUnit(text_dim, self.dim, from_zero_shot)
        self.query_weights = Correction(text_dim, 2, from_zero_shot)

    def tokens(self, audio: AudioBatch, metadata: MetadataBatch | None, tower: nn.Module) -> Tensor:
        """(B, 2, W): the transformed global and metadata tokens."""
        if metadata is None:
            token = self.no_metadata_token.expand(len(audio.frames), -1)
        else:
            token = torch.where(metadata.present[:, None], self.metadata_token(metadata.embeddings), self.no_metadata_token)
        return tower(audio.frames, audio.lengths, token[:, None])

    def items(self, audio: AudioBatch | None, metadata: MetadataBatch | None, tower: nn.Module | None) -> Tensor:
        tokens = self.tokens(audio, metadata, tower)
        a = F.normalize(self.audio(tokens[:, 0], audio.tags), dim=-1)
        if not self.from_zero_shot:
            m = F.normalize(self.metadata(tokens[:, 1]), dim=-1)
            return torch.cat([a, m], 1) / math.sqrt(2)
        x = self.text_input(metadata.embeddings)
        present = self.metadata(tokens[:, 1], x)
        m = torch.where(metadata.present[:, None], F.normalize(present, dim=-1), self.metadata(tokens[:, 1], self.no_metadata))
        return self.fuse(a, m)

    def queries(self, q: Tensor) -> Tensor:
        if self.from_zero_shot:
            q = self.text_input(q)
            q_a = F.normalize(q + self.query_audio(q), dim=-1)
            q_m = F.normalize(q + self.query_metadata(q), dim=-1)
            w = 2 * torch.softmax(self.query_weights(q), dim=-1)
            return torch.cat([w[:, :1] * q_a, w[:, 1:] * q_m], 1)
        w = torch.softmax(self.query_weights(q), dim=-1)
        q_a, q_m = F.normalize(self.query_audio(q), dim=-1), F.normalize(self.query_metadata(q), dim=-1)
        return torch.cat([w[:, :1] * q_a, w[:, 1:] * q_m], 1) * math.sqrt(2)

    def examples(self, audio: AudioBatch, tower: nn.Module) -> Tensor:
        a = F.normalize(self.audio(self.tokens(audio, None, tower)[:, 0], audio.tags), dim=-1)
        return torch.cat([a, torch.zeros_like(a)], 1)


HEADS: dict[Fusion, type[Head]] = {head.fusion: head for head in (AudioOnly, MetadataOnly, Late, Mid)}
