"""The query side of a model as a self-contained artefact run without torch:
an ONNX graph (onnxruntime, CPU) and its tokenizer (tokenizers).

`amr index` writes it beside every index it builds (format
``amr-query-encoder``, version 1), in the folder ``<stem>.<token>.query``
(amr.index.format.query_folder)::

    encoder.onnx        input_ids, attention_mask: (B, T) int64 → vectors: (B, D) float32, the
                        index's query vectors: the text encoder (fine-tuned weights included),
                        its pooling and whatever the model does after it (zero-shot [q̂; q̂], the
                        query projection of a trained model, mid fusion's gated units and
                        query-derived score weights); its metadata repeats format, version and
                        the fingerprint of the model, so that a folder of another model is refused
    encoder.onnx.data   its weights (ONNX external data: memory-mapped when loaded, not copied)
    tokenizer.json      the model's WordPiece tokenizer, truncating at MAX_TOKENS as amr.model.text does

The index manifest records it as its ``query_encoder`` attribute (see
`record`). Queries are normalised by amr.model.text_input exactly as for the torch
encoder, so both give the same vectors (to float rounding, tested).

Why these choices (bench/cli.py measures them): opset 17, the first with
LayerNormalization as one ONNX operator; weights as external data, which
onnxruntime maps instead of parsing and copying 90 MB of protobuf (a session
starts in 0.05 s instead of 0.2 s, and the process holds 110 MB instead of 190);
graph optimisation ORT_ENABLE_ALL, which costs about 20 ms when the session
starts and saves about 1 ms per encoding; one intra-op thread by default
(``--threads``): a short query is encoded in 4-5 ms on one core, and on two
busy cores a second thread saves a millisecond at best.
"""

from __future__ import annotations

import io
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amr.errors import AmrError
from amr.model.text_input import MAX_TOKENS, normalize_text

if TYPE_CHECKING:
    import numpy as np
    import torch

    from amr.index.reader import Index
    from amr.model.retrievers import Retriever
    from amr.model.text import TextEncoder

FORMAT = "amr-query-encoder"
VERSION = 1
OPSET = 17
GRAPH = "encoder.onnx"
WEIGHTS = "encoder.onnx.data"
TOKENIZER = "tokenizer.json"
# `amr query` and `amr serve` use the torch model instead when this is "torch" (to compare the two: bench/cli.py)
ENGINE_ENV = "AMR_QUERY_ENCODER"


def refresh_hint(path: Path) -> str:
    return f"`amr index --refresh-query-encoder -o {path}` adds it (or build the index again)"


# --- writing (at `amr index`: torch, transformers and onnx) ---------------------------------


def export_query_encoder(retriever: Retriever, index_path: Path) -> dict[str, Any]:
    """Write the query side of ``retriever`` beside the index at ``index_path``
    in a new folder, and return its manifest record; {} for a kind of model
    that has none (its queries are then encoded by the model itself).

    What is exported is the retriever's ``query_side()`` (amr.model.retrievers):
    its text encoder, the pooling, and the function from pooled embeddings to
    query vectors that its ``encode_queries`` applies."""
    from amr.index.format import query_folder

    side = retriever.query_side()
    if side is None:
        return {}
    text, pooling, vectors = side
    if getattr(text.tokenizer, "backend_tokenizer", None) is None:
        return {}  # a "slow" Python tokenizer: nothing tokenizers can run
    token = secrets.token_hex(4)
    folder = query_folder(index_path, token)  # recorded by the manifest only once complete
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "version": str(VERSION), "fingerprint": retriever.fingerprint}
    _write_graph(text, pooling, vectors, folder, metadata)
    _write_tokenizer(text, folder)
    return {
        "format": FORMAT,
        "version": VERSION,
        "token": token,
        "fingerprint": retriever.fingerprint,
        "text_model": text.name,
        "text_fingerprint": text.fingerprint,
        "pooling": pooling,
        "opset": OPSET,
        "max_tokens": MAX_TOKENS,
    }


def _write_graph(text: TextEncoder, pooling: str, vectors: Callable[[torch.Tensor], torch.Tensor], folder: Path, metadata: dict) -> None:
    import onnx
    import torch

    from amr.devices import eval_mode

    class QueryGraph(torch.nn.Module):
        """Token ids and mask → query vectors, as the retriever's encode_queries computes them."""

        def __init__(self) -> None:
            super().__init__()
            self.text = text
            owner = getattr(vectors, "__self__", None)  # a model's method: its weights are the graph's
            self.owner = owner if isinstance(owner, torch.nn.Module) else None
            self.types = "token_type_ids" in text.tokenizer.model_input_names

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.types:  # one text: every token is of type 0
                tokens["token_type_ids"] = torch.zeros_like(input_ids)
            return vectors(self.text(tokens, pooling))

    graph = QueryGraph()
    sample = text.tokenize(["a dog barking in the rain far away", "rain"])  # padded: the traced graph masks padding
    device = text.model.device
    inputs = (sample["input_ids"].to(device), sample["attention_mask"].to(device))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), eval_mode(graph), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps dynamic, and the exporter's deprecation
        torch.onnx.export(
            graph,
            inputs,
            buffer,
            input_names=["input_ids", "attention_mask"],
            output_names=["vectors"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "vectors": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(folder / GRAPH), save_as_external_data=True, all_tensors_to_one_file=True, location=WEIGHTS)


def _write_tokenizer(text: TextEncoder, folder: Path) -> None:
    from tokenizers import Tokenizer

    hf = text.tokenizer
    tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tokenizer.enable_truncation(MAX_TOKENS, direction=hf.truncation_side)
    tokenizer.enable_padding(direction=hf.padding_side, pad_id=hf.pad_token_id, pad_token=hf.pad_token)
    tokenizer.save(str(folder / TOKENIZER))


# --- reading (at `amr query` and `amr serve`: onnxruntime and tokenizers only) ---------------


class QueryEncoder:
    """The index's query encoder, loaded: texts → query vectors, as the model that built the index encodes them."""

    def __init__(self, folder: Path, record: dict[str, Any], threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.fingerprint = str(record["fingerprint"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
            self.session = ort.InferenceSession(str(folder / GRAPH), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime and tokenizers raise their own kinds of errors for a damaged file
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise AmrError(f"{folder}: cannot load the query encoder ({reason}); {refresh_hint(folder)}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if (meta.get("format"), meta.get("version")) != (FORMAT, str(VERSION)):
            raise AmrError(f"{folder / GRAPH}: not an amr query encoder of version {VERSION}; {refresh_hint(folder)}")
        if meta.get("fingerprint") != self.fingerprint:
            raise AmrError(
                f"{folder / GRAPH}: the query encoder of another model (fingerprint {str(meta.get('fingerprint'))[:12]}, "
                f"the index's is {self.fingerprint[:12]}); {refresh_hint(folder)}"
            )

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32 query vectors; a text without words is refused (it would be a vector of padding)."""
        import numpy as np

        normalized = [normalize_text(t) for t in texts]
        empty = next((t for t, n in zip(texts, normalized) if not n), None)
        if empty is not None:
            raise AmrError(f"the query {empty!r} has no words")
        encodings = self.tokenizer.encode_batch(normalized)
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        return self.session.run(["vectors"], {"input_ids": ids, "attention_mask": mask})[0]


def open_query_encoder(index: Index, threads: int = 1) -> QueryEncoder | None:
    """The index's query encoder; None where its model has none (its kind
    encodes queries itself) or where ENGINE_ENV asks for the torch model. An
    index built before amr wrote one: None, and a warning saying how to add it.
    One of another model, another format or damaged: an AmrError."""
    from amr.console import warn
    from amr.index.format import query_folder

    if os.environ.get(ENGINE_ENV, "").lower() == "torch":
        return None
    record = index.header.query_encoder
    if record is None:
        warn(f"{index.path}: has no query encoder (built by an older amr): text queries load torch, seconds; {refresh_hint(index.path)}")
        return None
    if not record:
        return None
    if (record.get("format"), record.get("version")) != (FORMAT, VERSION):
        raise AmrError(
            f"{index.path}: query encoder {record.get('format')} version {record.get('version')}, this amr reads {FORMAT} version "
            f"{VERSION}; {refresh_hint(index.path)}"
        )
    if record.get("fingerprint") != index.header.fingerprint:
        raise AmrError(f"{index.path}: its query encoder is of another model than its vectors; {refresh_hint(index.path)}")
    folder = query_folder(index.path, str(record.get("token")))
    if not (folder / GRAPH).is_file():
        raise AmrError(f"{folder}: missing (the index's query encoder); {refresh_hint(index.path)}")
    return QueryEncoder(folder, record, threads)
