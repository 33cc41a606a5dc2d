"""The retrieval model of Primus & Widmer (2024), section III.

Read top to bottom: the options (ModelConfig), the audio tower that pools a
cached frame-embedding sequence into one token, the gated embedding unit, the
model that maps items and queries to vectors, and the loss.

Every fusion mode reduces an item to ONE vector and a query to ONE vector whose
inner product is the retrieval score, so the index ranks by a single inner
product. The vectors are concatenations of named segments (D = ``width``):

=========  ============================  ===============================  ========================
fusion     item                          query                            score
=========  ============================  ===============================  ========================
none       [â]                           [q̂]                              cos(q, a)
metadata   [m̂]                           [q̂]                              cos(q, m)
late       [a; m] / |a + m|              [q̂; q̂]                           cos(q, a + m)
mid        [â'; m̂'] / √2                 [w_a q_a; w_m q_m] · √2          w_a cos(q_a, a') + w_m cos(q_m, m')
=========  ============================  ===============================  ========================

(x̂ = x/|x|.) ``a`` is the audio tower's global token projected to D, ``m``
the metadata text embedding projected to D. In ``mid`` the metadata embedding
joins the audio sequence as a token; ``a'`` and ``m'`` are the transformed
global and metadata tokens, ``q_a`` and ``q_m`` two gated embedding units of
the query (unit length) and ``(w_a, w_m)`` a softmax over a linear map of it.

An item without metadata uses a learned "no metadata" embedding in place of
the metadata text embedding, so every item gets a valid vector.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.errors import AmrError
from amr.items import METADATA_FIELDS, Item, metadata_text
from amr.text import DEFAULT_TEXT_MODEL, TextEncoder

FUSIONS = ("none", "metadata", "late", "mid")
CAPTIONS = "captions"  # the metadata "field" of Clotho's full-sentence setting
MAX_FRAMES = 1024  # longer sequences are subsampled evenly (about 5.5 min of mn04 frames)
FROZEN_TEXT_BATCH = 256  # texts per batch when a frozen encoder fills its memo
ENCODE_FRAMES = 16384  # frames (padded) per audio-tower batch at inference


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model (the checkpoint stores it).

    Defaults and why: a stack of 2 pre-norm layers of width 128 with 4 heads,
    feed-forward 512 (4 x width) and residual dropout 0.1. One `amr train
    --freeze-text` epoch on Clotho (19,195 pairs of 47-94 frames) must fit in
    a minute on two CPU cores, and the audio tower is nearly all of that time
    (bench/train.py: 43 s per epoch with late fusion, 96 % of it in the forward
    and backward pass). Width 256 costs about twice as much per step (about 80 s
    per epoch); on sfx-dev's val split width 128 x 2 layers matched 256 x 2 and
    256 x 1 within seed noise. The retrieval space has the model width.
    ``metadata`` lists item fields (amr.items.METADATA_FIELDS) or is
    ("captions",) for Clotho's full-sentence setting.
    """

    fusion: str = "late"
    metadata: tuple[str, ...] = METADATA_FIELDS
    text_model: str = DEFAULT_TEXT_MODEL
    freeze_text: bool = False
    separate_text_encoders: bool = False
    width: int = 128
    depth: int = 2
    heads: int = 4
    ff: int = 512
    dropout: float = 0.1
    audio_dim: int = 0  # the cache's embedding size; 0 until training fills it in

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", tuple(self.metadata))
        if self.fusion not in FUSIONS:
            raise AmrError(f"unknown fusion {self.fusion!r}; expected one of {', '.join(FUSIONS)}")
        known = (*METADATA_FIELDS, CAPTIONS)
        if not self.metadata or any(f not in known for f in self.metadata):
            raise AmrError(f"metadata fields {','.join(self.metadata)!r}: expected some of {', '.join(known)}")
        if CAPTIONS in self.metadata and len(self.metadata) > 1:
            raise AmrError("metadata 'captions' (Clotho's full-sentence setting) cannot be combined with other fields")
        if self.width % self.heads:
            raise AmrError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.freeze_text and self.separate_text_encoders:
            raise AmrError("separate text encoders only differ when fine-tuned: drop --freeze-text or --separate-text-encoders")

    @property
    def uses_audio(self) -> bool:
        return self.fusion != "metadata"

    @property
    def uses_metadata(self) -> bool:
        return self.fusion != "none"


def item_metadata(item: Item, fields: Sequence[str], caption: int = 0) -> str | None:
    """The metadata text of an item under ``fields``; with ("captions",) its
    caption number ``caption`` (modulo their count), None when it has none."""
    if tuple(fields) == (CAPTIONS,):
        return item.captions[caption % len(item.captions)] if item.captions else None
    return metadata_text(item, fields)


def sinusoids(length: int, width: int) -> Tensor:
    """The fixed sinusoidal positional encoding of Vaswani et al. (2017), (length, width)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def pad_sequences(sequences: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """(B, T_max, C) float32 frames, zero-padded, and (B,) lengths. Sequences
    longer than MAX_FRAMES keep MAX_FRAMES evenly spaced frames."""
    sequences = [s[np.linspace(0, len(s) - 1, MAX_FRAMES).round().astype(int)] if len(s) > MAX_FRAMES else s for s in sequences]
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    frames = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[-1]), dtype=np.float32)
    for row, s in enumerate(sequences):
        frames[row, : len(s)] = s
    return torch.from_numpy(frames), lengths


class EncoderLayer(nn.Module):
    """A pre-norm transformer encoder layer: self-attention with a padding
    mask, then a ReLU feed-forward block, each added back to the residual
    stream with dropout on its output (the residual dropout of Vaswani et al.;
    no dropout on attention weights or inside the feed-forward block, whose
    random masks cost about a third of a CPU training step at width 128)."""

    def __init__(self, width: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff), nn.ReLU(), nn.Linear(ff, width))

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        """x (B, T, W); attend (B, 1, 1, T): True where a key is a real token."""
        b, t, w = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).reshape(b, t, w)
        x = x + F.dropout(self.attention_out(attended), self.dropout, self.training)
        return x + F.dropout(self.ff(self.ff_norm(x)), self.dropout, self.training)


class AudioTower(nn.Module):
    """Frames → transformed global token (and extra tokens, e.g. metadata).

    The frames are projected to the model width and get a fixed sinusoidal
    positional encoding; a global token, initialised to the mean of the
    projected (unpadded) frames plus a learnable bias, is prepended; a stack of
    transformer encoder layers runs with a padding mask, so padded frames
    never influence the result; a final layer norm. Extra tokens (already at
    model width, no positional encoding) sit right after the global token.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.project = nn.Linear(config.audio_dim, config.width)
        self.global_bias = nn.Parameter(torch.zeros(config.width))
        self.layers = nn.ModuleList(
            EncoderLayer(config.width, config.heads, config.ff, config.dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)

    def global_token(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(projected frames (B,T,W), valid mask (B,T), initial global token (B,W))."""
        x = self.project(frames)
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        mean = (x * valid[..., None]).sum(1) / lengths[:, None].clamp(min=1)
        return x, valid, mean + self.global_bias

    def forward(self, frames: Tensor, lengths: Tensor, extra: Tensor | None = None) -> Tensor:
        """(B, 1 + n_extra, W): the transformed global token, then the extra tokens."""
        x, valid, token = self.global_token(frames, lengths)
        x = x + sinusoids(x.shape[1], x.shape[2])
        special = token[:, None] if extra is None else torch.cat([token[:, None], extra.reshape(len(x), -1, x.shape[2])], 1)
        n = special.shape[1]
        attend = torch.cat([torch.ones(len(x), n, dtype=torch.bool), valid], 1)[:, None, None, :]
        x = torch.cat([special, x], 1)
        for layer in self.layers:
            x = layer(x, attend)
        return self.norm(x[:, :n])


class GatedEmbeddingUnit(nn.Module):
    """Miech et al. (2018): Y = W1 x + b1; Y ∘ σ(W2 Y + b2), L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.gate = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return F.normalize(y * torch.sigmoid(self.gate(y)), dim=-1)


class RetrievalModel(nn.Module):
    """Text encoder(s), audio tower and fusion heads; see the module docstring.

    A frozen text encoder stays in eval mode and out of the optimizer; training
    embeds each text with it once (``remember``) and reuses the result.
    """

    def __init__(self, config: ModelConfig, text: TextEncoder):
        super().__init__()
        self.config = config
        self.text = text
        # Registered only when separate, so that a shared encoder's weights
        # appear once in the state dict.
        self.separate_text = copy.deepcopy(text) if config.separate_text_encoders else None
        self._memo: dict[str, Tensor] = {}
        t, w = text.dim, config.width
        if config.uses_audio:
            self.audio = AudioTower(config)
            self.audio_head = nn.Linear(w, w)
        if config.uses_metadata:
            self.no_metadata = nn.Parameter(torch.randn(t) * 0.02)
        if config.fusion == "mid":
            self.metadata_token = nn.Linear(t, w)
            self.metadata_head = nn.Linear(w, w)
            self.query_audio = GatedEmbeddingUnit(t, w)
            self.query_metadata = GatedEmbeddingUnit(t, w)
            self.query_weights = nn.Linear(t, 2)
        else:
            if config.uses_metadata:
                self.metadata_head = nn.Linear(t, w)
            self.query_head = nn.Linear(t, w)

    @property
    def metadata_text(self) -> TextEncoder:
        return self.separate_text if self.separate_text is not None else self.text

    @property
    def segments(self) -> list[tuple[str, int]]:
        w = self.config.width
        return [("metadata", w)] if self.config.fusion == "metadata" else (
            [("audio", w)] if self.config.fusion == "none" else [("audio", w), ("metadata", w)]
        )

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.segments)

    def text_parameters(self) -> list[nn.Parameter]:
        """The pretrained text encoder(s)' parameters (their own learning rate)."""
        separate = list(self.separate_text.parameters()) if self.separate_text is not None else []
        return [*self.text.parameters(), *separate]

    def new_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the pretrained text encoder(s)."""
        pretrained = {id(p) for p in self.text_parameters()}
        return [p for p in self.parameters() if id(p) not in pretrained]

    def train(self, mode: bool = True) -> RetrievalModel:
        super().train(mode)
        if self.config.freeze_text:
            self.text.eval()
        return self

    # --- text ---------------------------------------------------------------

    def remember(self, texts: Sequence[str], progress: bool = False) -> None:
        """Embed texts with the frozen encoder once and keep the result."""
        if not self.config.freeze_text:
            raise ValueError("only a frozen text encoder's outputs can be kept")
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            emb = self.text.encode(missing, batch_size=FROZEN_TEXT_BATCH, progress=progress)
            self._memo.update(zip(missing, torch.from_numpy(emb)))

    def embed_texts(self, queries: Sequence[str], metadata: Sequence[str | None] = ()) -> tuple[Tensor, Tensor]:
        """Text-encoder [CLS] embeddings of queries (Q, t) and of metadata texts
        (M, t), where a None metadata text gets the "no metadata" embedding.
        With a shared encoder both go through one forward pass."""
        texts = [m for m in metadata if m is not None]
        if self.separate_text is None:
            both = self._cls(self.text, [*queries, *texts])
            q, m = both[: len(queries)], both[len(queries) :]
        else:
            q, m = self._cls(self.text, list(queries)), self._cls(self.separate_text, texts)
        if not metadata:
            return q, m
        present = torch.tensor([x is not None for x in metadata])
        out = self.no_metadata.expand(len(metadata), -1)
        if len(m):
            out = out.index_put((present.nonzero()[:, 0],), m)
        return q, out

    def _cls(self, encoder: TextEncoder, texts: list[str]) -> Tensor:
        """[CLS] outputs: with gradients while fine-tuning, else without (batched
        by length), from the memo where a frozen encoder already embedded the text."""
        if not texts:
            return torch.zeros(0, encoder.dim)
        if self.training and torch.is_grad_enabled() and not self.config.freeze_text:
            return encoder(encoder.tokenize(texts))
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        computed = dict(zip(missing, torch.from_numpy(encoder.encode(missing)))) if missing else {}
        return torch.stack([self._memo[t] if t in self._memo else computed[t] for t in texts])

    # --- vectors ------------------------------------------------------------

    def item_vectors(self, frames: Tensor | None, lengths: Tensor | None, metadata: Tensor | None) -> Tensor:
        """(B, dim) item vectors from padded frames (B,T,C) with lengths and
        metadata embeddings (B, t); each argument only where the fusion uses it."""
        fusion = self.config.fusion
        if fusion == "none":
            return F.normalize(self.audio_head(self.audio(frames, lengths)[:, 0]), dim=-1)
        if fusion == "metadata":
            return F.normalize(self.metadata_head(metadata), dim=-1)
        if fusion == "late":
            a = self.audio_head(self.audio(frames, lengths)[:, 0])
            m = self.metadata_head(metadata)
            return torch.cat([a, m], 1) / (a + m).norm(dim=1, keepdim=True).clamp(min=1e-8)
        tokens = self.audio(frames, lengths, self.metadata_token(metadata))
        a = F.normalize(self.audio_head(tokens[:, 0]), dim=-1)
        m = F.normalize(self.metadata_head(tokens[:, 1]), dim=-1)
        return torch.cat([a, m], 1) / math.sqrt(2)

    def query_vectors(self, queries: Tensor) -> Tensor:
        """(Q, dim) query vectors from query text embeddings (Q, t)."""
        fusion = self.config.fusion
        if fusion == "mid":
            w = torch.softmax(self.query_weights(queries), dim=-1)
            q = torch.cat([w[:, :1] * self.query_audio(queries), w[:, 1:] * self.query_metadata(queries)], 1)
            return q * math.sqrt(2)
        q = F.normalize(self.query_head(queries), dim=-1)
        return torch.cat([q, q], 1) if fusion == "late" else q

    def example_vectors(self, frames: Tensor, lengths: Tensor) -> Tensor:
        """(B, dim): the unit audio-tower vector of each clip in the audio
        segment, zeros elsewhere (query by example). In ``mid`` the clip is
        pooled with the "no metadata" token."""
        fusion = self.config.fusion
        if fusion == "metadata":
            raise ValueError("a metadata-only model has no audio tower")
        extra = self.metadata_token(self.no_metadata.expand(len(frames), -1)) if fusion == "mid" else None
        a = F.normalize(self.audio_head(self.audio(frames, lengths, extra)[:, 0]), dim=-1)
        return a if fusion == "none" else torch.cat([a, torch.zeros_like(a)], 1)

    # --- inference (numpy in, numpy out; eval mode, no gradients) -------------

    def encode_items(self, sequences: Sequence[np.ndarray] | None, metadata: Sequence[str | None] | None) -> np.ndarray:
        """(n, dim) float32 item vectors from frame sequences (T_i, C) and
        metadata texts (None: the item has none); each only where the fusion uses it."""
        with _evaluating(self):
            meta = self.embed_texts([], metadata)[1] if self.config.uses_metadata else None
            if not self.config.uses_audio:
                return self.item_vectors(None, None, meta).numpy()
            out = np.empty((len(sequences), self.dim), dtype=np.float32)
            for rows in _length_batches(sequences):
                frames, lengths = pad_sequences([sequences[r] for r in rows])
                out[rows] = self.item_vectors(frames, lengths, None if meta is None else meta[rows]).numpy()
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(q, dim) float32 query vectors."""
        with _evaluating(self):
            return self.query_vectors(self.embed_texts(list(texts))[0]).numpy()

    def encode_examples(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """(q, dim) float32 query-by-example vectors (see example_vectors)."""
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        with _evaluating(self):
            for rows in _length_batches(sequences):
                out[rows] = self.example_vectors(*pad_sequences([sequences[r] for r in rows])).numpy()
        return out


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _length_batches(sequences: Sequence[np.ndarray]) -> Iterator[list[int]]:
    """Indices in batches of similar length, each at most ENCODE_FRAMES padded frames."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * min(len(sequences[i]), MAX_FRAMES) > ENCODE_FRAMES:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def nt_xent(scores: Tensor, clips: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE over a batch of (query i, item i) pairs.

    ``scores`` (B, B) holds query-by-item similarities, ``clips`` (B,) the clip
    of each pair: an item of the same clip as the positive (another caption of
    it) is masked out instead of counted as a negative, in both directions.
    """
    same = clips[:, None] == clips[None, :]
    logits = (scores / temperature).masked_fill(same & ~torch.eye(len(clips), dtype=torch.bool), float("-inf"))
    target = torch.arange(len(clips))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


