"""The DCASE 2025 task 6 setting: its relevance file, its metric, its submission file.

DCASE 2025's language-based audio retrieval evaluates on the Clotho
evaluation split with additional annotations: a query (a Clotho caption) may
have several relevant clips, listed in ``metadata_eval.csv`` as distributed
with the task's baseline (CPJKU/dcase2025_task6_baseline, ``resources/``)::

    query,audio_filenames
    A dog barks while cars pass by.,"['dog_street.wav', 'Barking &#39;dog&#39;.wav']"

Systems are ranked by mAP@16 with AP normalised by the total number of
relevant files (`amr.metrics.APNorm.total`); `PROTOCOLS` names both settings.

Reading the relevance file (`read_relevance`):

* ``audio_filenames`` is a Python list literal of strings, parsed by
  ``ast.literal_eval`` (literals only; nothing is ever evaluated) and refused
  unless it is a non-empty list of strings.
* A file name matches the item whose id (a Clotho item's id is its file name)
  is exactly that string; the names are taken as written, HTML entities such
  as ``&#39;`` included, because that is how the file lists them. Only a name
  that matches no id exactly is looked up again after decoding HTML entities
  (``html.unescape``) and Unicode NFC normalisation of both sides, so that a
  copy of Clotho whose file is named ``Barking 'dog'.wav`` or stored in NFD
  (as macOS file systems do) still matches; a name that matches two items
  that way is ambiguous and refused.
* A query matches when it is exactly a caption of an evaluated item, with the
  same fallback. It is encoded as written in the file.
* A row whose query or a file of which matches nothing is reported with its
  line number: strict (the default), the first one is an error; ``lenient``,
  each is reported on stderr and the row is left out, never silently.

The submission file (`write_submission`) is the score matrix the baseline's
predict script writes: a header ``index,<file name>,...`` (the audio files'
base names), then one row per query, ``<query text>,<score>,...``, scores as
``%.9g`` (every float32 round-trips). Rows are written as they come, so
scores can stream in blocks of queries.
"""

from __future__ import annotations

import ast
import csv
import html
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from amr.datasets.common import Problems, SkipHandler
from amr.errors import AmrError
from amr.files import atomic_output
from amr.items import Item, Query
from amr.metrics import DEFAULT_AP_KS, DEFAULT_KS, APNorm

if TYPE_CHECKING:
    import numpy as np

RELEVANCE_COLUMNS = ("query", "audio_filenames")
SUBMISSION_INDEX = "index"  # the header of the query column, as pandas writes the baseline's DataFrame


@dataclass(frozen=True)
class Cutoffs:
    """What a protocol reports: recall at ``ks``, mAP at ``ap_ks`` normalised by ``ap_norm``."""

    ks: tuple[int, ...]
    ap_ks: tuple[int, ...]
    ap_norm: APNorm


PROTOCOLS = {
    "dcase2024": Cutoffs(DEFAULT_KS, DEFAULT_AP_KS, APNorm.clipped),  # Clotho / AudioCaps, one relevant clip per caption
    "dcase2025": Cutoffs(DEFAULT_KS, (16,), APNorm.total),  # several relevant clips per query (metadata_eval.csv)
}


def _key(text: str) -> str:
    """The looser form names and captions are compared in when they do not match as written."""
    return unicodedata.normalize("NFC", html.unescape(text))


class _Lookup:
    """Strings to values: exactly as written first, else by `_key` when that is unambiguous."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self.exact: dict[str, str] = {}
        self.loose: dict[str, set[str]] = {}
        for text, value in pairs:
            self.exact.setdefault(text, value)
            self.loose.setdefault(_key(text), set()).add(value)

    def find(self, text: str) -> tuple[str | None, str | None]:
        """(value, None), or (None, why not)."""
        if text in self.exact:
            return self.exact[text], None
        values = self.loose.get(_key(text), set())
        if len(values) == 1:
            return next(iter(values)), None
        return None, "matches several items once HTML entities are decoded" if values else "matches nothing"


def read_relevance(path: Path, items: Sequence[Item], lenient: bool = False, on_skip: SkipHandler | None = None) -> list[Query]:
    """The queries of a DCASE 2025 ``metadata_eval.csv`` against ``items`` (see
    the module docstring). Query ids are ``<file name>:<line>``."""
    path = Path(path)
    problems = Problems(lenient, on_skip)
    captions = _Lookup((caption, caption) for item in items for caption in item.captions)
    files = _Lookup((item.id, item.id) for item in items)
    queries = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(RELEVANCE_COLUMNS) <= set(reader.fieldnames):
                columns = ",".join(RELEVANCE_COLUMNS)
                raise AmrError(f"{path}: needs the columns {columns} (DCASE 2025 metadata_eval.csv), got {reader.fieldnames}")
            for row in reader:
                query = _row_query(row, path, reader.line_num, captions, files, problems)
                if query is not None:
                    queries.append(query)
    except UnicodeDecodeError as e:
        raise AmrError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise AmrError(f"{path}: not a readable CSV ({e})") from None
    except FileNotFoundError:
        raise AmrError(f"{path}: no such file") from None
    if not queries:
        raise AmrError(f"{path}: no queries match the {len(items)} evaluated items")
    return queries


def _row_query(row: dict[str, str | None], path: Path, line: int, captions: _Lookup, files: _Lookup, problems: Problems) -> Query | None:
    where = f"{path}:{line}"
    text, listed = row.get("query") or "", row.get("audio_filenames") or ""
    names = _parse_list(listed)
    if names is None:
        problems.report(where, f"audio_filenames is not a non-empty list literal of file names: {listed[:80]!r}")
        return None
    _, why = captions.find(text)
    if why is not None:
        problems.report(where, f"query {text!r} {why} among the captions of the evaluated items")
        return None
    relevant = []
    for name in names:
        item_id, why = files.find(name)
        if item_id is None:
            problems.report(where, f"audio file {name!r} {why} among the evaluated items")
            return None
        relevant.append(item_id)
    return Query(id=f"{path.name}:{line}", text=text, relevant=list(dict.fromkeys(relevant)))


def _parse_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        return None
    return list(value)


def submission_columns(items: Sequence[Item]) -> list[str]:
    """The audio files' base names, the columns of a submission; two alike are an error."""
    names = [Path(item.audio).name for item in items]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AmrError(f"two evaluated audio files are both named {name!r}; a submission names each file once")
        seen.add(name)
    return names


def write_submission(path: Path, files: Sequence[str], rows: Iterable[tuple[Sequence[str], np.ndarray]]) -> int:
    """Write the score matrix: ``rows`` yields (query texts, (len(texts), len(files))
    scores) blocks, written as they come, atomically. Returns the number of query rows."""
    count = 0
    try:
        with atomic_output(Path(path)) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([SUBMISSION_INDEX, *files])
            for texts, scores in rows:
                if scores.shape != (len(texts), len(files)):
                    expected = (len(texts), len(files))
                    raise ValueError(f"a block of {len(texts)} queries has scores of shape {scores.shape}, expected {expected}")
                for text, row in zip(texts, scores):
                    writer.writerow([text, *(f"{float(v):.9g}" for v in row)])
                count += len(texts)
    except OSError as e:
        raise AmrError(f"{path}: cannot write the submission ({e.strerror or e})") from e
    return count


def write_model_scores(path: Path, items: Sequence[Item], texts: Sequence[str], scores: np.ndarray, block: int = 256) -> int:
    """One model's (len(texts), len(items)) scores as a submission: each distinct
    text once (its first row), streamed ``block`` rows at a time (no copy of the matrix)."""
    rows: dict[str, int] = {}
    for row, text in enumerate(texts):
        rows.setdefault(text, row)
    first = sorted(rows.values())
    blocks = (([texts[r] for r in first[i : i + block]], scores[first[i : i + block]]) for i in range(0, len(first), block))
    return write_submission(path, submission_columns(items), blocks)


def read_submission_queries(path: Path) -> list[str]:
    """The query texts of a CSV with a ``caption`` column (the baseline's retrieval_captions.csv), in order, once each."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "caption" not in reader.fieldnames:
                raise AmrError(f"{path}: needs a 'caption' column (the DCASE retrieval_captions.csv), got {reader.fieldnames}")
            texts = [row["caption"] or "" for row in reader]
    except FileNotFoundError:
        raise AmrError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise AmrError(f"{path}: not a readable UTF-8 CSV ({e})") from None
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if not texts:
        raise AmrError(f"{path}: no captions")
    return texts
