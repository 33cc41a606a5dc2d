"""The retrieval model of Primus & Widmer (2024), section III.

Read top to bottom: the options (ModelConfig), the audio tower that pools a
cached frame-embedding sequence into tokens, the model that embeds texts and
hands audio and metadata to its fusion head (amr.model.heads: how the fusion modes
reduce items and queries to vectors, and where training starts), and the loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.config import CAPTIONS, ModelConfig
from amr.devices import eval_mode
from amr.items import Item, metadata_text
from amr.model.fusion import Init
from amr.model.heads import HEADS, AudioBatch, MetadataBatch
from amr.model.text import TextEncoder

MAX_FRAMES = 1024  # longer sequences are subsampled evenly (about 5.5 min of mn04 frames)
FROZEN_TEXT_BATCH = 256  # texts per batch when a frozen encoder fills its memo
ENCODE_FRAMES = 16384  # frames (padded) per audio-tower batch at inference


def item_metadata(item: Item, fields: Sequence[str], caption: int = 0) -> str | None:
    """The metadata text of an item under ``fields``; with ("captions",) its
    caption number ``caption`` (modulo their count), None when it has none."""
    if tuple(fields) == (CAPTIONS,):
        return item.captions[caption % len(item.captions)] if item.captions else None
    return metadata_text(item, fields)


def sinusoids(length: int, width: int, device: torch.device | None = None) -> Tensor:
    """The fixed sinusoidal positional encoding of Vaswani et al. (2017), (length, width)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, device=device)
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
    """Frames → the transformed global token (and extra tokens, e.g. metadata).

    The frames are projected to the model width and get a fixed sinusoidal
    positional encoding; a global token, initialised to the mean of the
    projected (unpadded) frames plus a learnable bias, is prepended, then the
    extra tokens (already at model width); the special tokens get learned
    type embeddings (global, then one per extra token) instead of positions.
    A stack of transformer encoder layers runs with a padding mask, so padded
    frames never influence the result; a final layer norm.
    """

    def __init__(self, config: ModelConfig, extra_tokens: int = 0):
        super().__init__()
        self.project = nn.Linear(config.audio_dim, config.width)
        self.global_bias = nn.Parameter(torch.zeros(config.width))
        self.types = nn.Parameter(torch.randn(1 + extra_tokens, config.width) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(config.width, config.heads, config.ff, config.dropout) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)

    def global_token(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(projected frames (B,T,W), valid mask (B,T), initial global token (B,W))."""
        x = self.project(frames)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        mean = (x * valid[..., None]).sum(1) / lengths[:, None].clamp(min=1)
        return x, valid, mean + self.global_bias

    def forward(self, frames: Tensor, lengths: Tensor, extra: Tensor | None = None) -> Tensor:
        """(B, 1 + n_extra, W): the transformed global token, then the extra tokens (B, n_extra, W)."""
        x, valid, token = self.global_token(frames, lengths)
        x = x + sinusoids(x.shape[1], x.shape[2], x.device)
        special = token[:, None] if extra is None else torch.cat([token[:, None], extra], 1)
        n = special.shape[1]
        special = special + self.types[:n]
        attend = torch.cat([torch.ones(len(x), n, dtype=torch.bool, device=x.device), valid], 1)[:, None, None, :]
        x = torch.cat([special, x], 1)
        for layer in self.layers:
            x = layer(x, attend)
        return self.norm(x[:, :n])


class RetrievalModel(nn.Module):
    """Text encoder(s), audio tower and fusion head (amr.model.heads).

    A frozen text encoder stays in eval mode and out of the optimizer; training
    embeds each text with it once (``remember``) and reuses the result.
    """

    def __init__(self, config: ModelConfig, text: TextEncoder):
        super().__init__()
        config = replace(config, text_pooling=text.resolve_pooling(config.text_pooling))
        self.config = config
        self.text = text
        # Registered only when separate, so that a shared encoder's weights
        # appear once in the state dict.
        self.separate_text = copy.deepcopy(text) if config.separate_text_encoders else None
        self._memo: dict[str, Tensor] = {}
        if config.uses_audio:
            self.audio = AudioTower(config, extra_tokens=HEADS[config.fusion].extra_tokens)
        self.head = HEADS[config.fusion](config.width, text.dim, config.num_classes, config.init is Init.zero_shot)

    @property
    def parts(self) -> list[tuple[str, int]]:
        return self.head.parts

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.parts)

    @property
    def device(self) -> torch.device:
        return self.head.log_weights.device

    @property
    def metadata_text(self) -> TextEncoder:
        return self.separate_text if self.separate_text is not None else self.text

    def start_from_zero_shot(self, class_embeddings: np.ndarray) -> None:
        """Set the zero-shot starting point (see amr.model.heads): the class-name
        embeddings of the label–text bridge, and the zero-shot weights."""
        if self.config.init is not Init.zero_shot:
            raise ValueError("only a model configured with init zero-shot starts from zero-shot")
        embeddings = torch.from_numpy(class_embeddings).to(self.device)
        self.head.start_from_zero_shot(embeddings, self.config.audio_weight, self.config.metadata_weight)

    def text_parameters(self) -> list[nn.Parameter]:
        """The pretrained text encoder(s)' parameters (their own learning rate)."""
        separate = list(self.separate_text.parameters()) if self.separate_text is not None else []
        return [*self.text.parameters(), *separate]

    def new_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter outside the pretrained text encoder(s)."""
        pretrained = {id(p) for p in self.text_parameters()}
        return [p for p in self.parameters() if id(p) not in pretrained and p.requires_grad]

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
            emb = self.text.encode(missing, pooling=self.config.text_pooling, batch_size=FROZEN_TEXT_BATCH, progress=progress)
            self._memo.update(zip(missing, torch.from_numpy(emb)))

    def embed_texts(self, queries: Sequence[str], metadata: Sequence[str | None] = ()) -> tuple[Tensor, MetadataBatch]:
        """Text embeddings (the model's pooling) of queries (Q, t) and of
        metadata texts (M, t), where a None text marks an item without
        metadata (a zero row, ``present`` False). With a shared encoder both
        go through one forward pass."""
        texts = [m for m in metadata if m is not None]
        if self.separate_text is None:
            both = self._pooled(self.text, [*queries, *texts])
            q, m = both[: len(queries)], both[len(queries) :]
        else:
            q, m = self._pooled(self.text, list(queries)), self._pooled(self.separate_text, texts)
        present = torch.tensor([x is not None for x in metadata], dtype=torch.bool, device=self.device)
        rows = torch.zeros(len(metadata), q.shape[1], device=self.device)
        if len(m):
            rows = rows.index_put((present.nonzero()[:, 0],), m)
        return q, MetadataBatch(rows, present)

    def _pooled(self, encoder: TextEncoder, texts: list[str]) -> Tensor:
        """Pooled outputs: with gradients while fine-tuning, else without (batched
        by length), from the memo where a frozen encoder already embedded the text."""
        pooling = self.config.text_pooling
        if not texts:
            return torch.zeros(0, encoder.dim, device=self.device)
        if self.training and torch.is_grad_enabled() and not self.config.freeze_text:
            return encoder(encoder.tokenize(texts), pooling)
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        computed = dict(zip(missing, torch.from_numpy(encoder.encode(missing, pooling=pooling)))) if missing else {}
        return torch.stack([self._memo[t] if t in self._memo else computed[t] for t in texts]).to(self.device)

    # --- vectors ------------------------------------------------------------

    def item_vectors(self, audio: AudioBatch | None, metadata: MetadataBatch | None) -> Tensor:
        """(B, dim) item vectors; each argument only where the fusion uses it."""
        return self.head.items(audio, metadata, getattr(self, "audio", None))

    def query_vectors(self, queries: Tensor) -> Tensor:
        """(Q, dim) query vectors from query text embeddings (Q, t)."""
        return self.head.queries(queries)

    def example_vectors(self, audio: AudioBatch) -> Tensor:
        """(B, dim): the unit audio vector of each clip in the audio part,
        zeros elsewhere (query by example)."""
        if not self.config.uses_audio:
            raise ValueError("a metadata-only model has no audio tower")
        return self.head.examples(audio, self.audio)

    # --- inference (numpy in, numpy out; eval mode, no gradients) -------------

    def encode_items(
        self, sequences: Sequence[np.ndarray] | None, tags: np.ndarray | None, metadata: Sequence[str | None] | None
    ) -> np.ndarray:
        """(n, dim) float32 item vectors from frame sequences (T_i, C), tag
        probabilities (n, classes) and metadata texts (None: the item has
        none); each only where the fusion uses it."""
        with _evaluating(self):
            meta = self.embed_texts([], metadata)[1] if self.config.uses_metadata else None
            if not self.config.uses_audio:
                return self.item_vectors(None, meta).cpu().numpy()
            out = np.empty((len(sequences), self.dim), dtype=np.float32)
            for rows in _length_batches(sequences):
                audio = self._audio_batch([sequences[r] for r in rows], tags[rows])
                part = None if meta is None else MetadataBatch(meta.embeddings[rows], meta.present[rows])
                out[rows] = self.item_vectors(audio, part).cpu().numpy()
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(q, dim) float32 query vectors."""
        with _evaluating(self):
            return self.query_vectors(self.embed_texts(list(texts))[0]).cpu().numpy()

    def encode_examples(self, sequences: Sequence[np.ndarray], tags: np.ndarray) -> np.ndarray:
        """(q, dim) float32 query-by-example vectors (see example_vectors)."""
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        with _evaluating(self):
            for rows in _length_batches(sequences):
                out[rows] = self.example_vectors(self._audio_batch([sequences[r] for r in rows], tags[rows])).cpu().numpy()
        return out

    def _audio_batch(self, sequences: Sequence[np.ndarray], tags: np.ndarray) -> AudioBatch:
        frames, lengths = pad_sequences(sequences)
        device = self.device
        return AudioBatch(frames.to(device), lengths.to(device), torch.as_tensor(np.asarray(tags, np.float32), device=device))


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients; each module's previous mode is restored."""
    with eval_mode(model), torch.no_grad():
        yield


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
    eye = torch.eye(len(clips), dtype=torch.bool, device=scores.device)
    same = clips[:, None] == clips[None, :]
    logits = (scores / temperature).masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(clips), device=scores.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
