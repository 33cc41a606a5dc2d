"""Moments: the span of a long recording a query's sound occupies, and how well it is found.

**Refinement.** A long recording is indexed on a fixed grid (amr.segments:
10 s windows every 5 s), so a search says which window matches best, not
where the sound starts and ends. `refine` turns a recording's scores into
spans: it scores *fine windows* (``RefineConfig.window`` seconds, every
``hop`` seconds, over the whole recording: each one's frames from the
cache and the tagger's probabilities of those frames, encoded as the grid's
segments are), then repeatedly takes the best fine window not yet used and
grows it into the run of adjacent windows whose scores reach ``threshold``
of the way from the recording's median fine score (its background) to that
peak (and leaves out the flanks around it, down to where scores rise
again, so that a sound's shoulders are not moments of their own). A run's
moment spans the centres of its first and last windows, half a hop either side (a window half inside a sound scores about halfway, so
centres, not window edges, track the sound's edges), or the recording's edge
where the run reaches its first or last window. The moments are ranked
by their peak score. The defaults (2 s windows every 0.5 s, threshold 0.3)
were chosen on bench/moments.py's recordings of seed 1 (40 recordings, 122
queries: 1, 1.5, 3, 4 and 5 s windows and thresholds 0.2 to 0.5 tried) and
are reported on those of seed 0 (README, "Moments"): shorter windows are
noisier, longer ones blur the edges of short sounds.

**Evaluation.** Moment retrieval as its benchmarks measure it (QVHighlights'
standalone evaluation, used by Clotho-Moment and CASTELLA): each query has
one recording and one or more ground-truth windows in it, and a ranked list
of predicted spans in that recording. R@K at IoU θ is the share of queries
with a predicted span among their top K whose temporal IoU with a
ground-truth window is at least θ; mAP is the average precision of the
ranked spans (each ground-truth window matched once, ActivityNet's
interpolated AP) averaged over θ = 0.5, 0.55, ..., 0.95 and over queries.

**Annotation files** (`read_moments`), told apart by their content:

* JSON Lines with ``relevant_windows``: Clotho-Moment as distributed with
  line/lighthouse (also its CASTELLA and QVHighlights files), one query per
  line, ``{"qid", "query", "vid", "duration", "relevant_windows": [[s, e], ...]}``;
* a JSON list of recordings with ``moments``: CASTELLA's own json
  (``{"yid", "global_caption", "duration", "moments": [{"local_caption",
  "timestamps": [[s, e], ...]}, ...]}``), one query per local caption.

A recording (``vid``/``yid``) is the evaluated item with that id, else the one
whose audio file's name without extension is that; times are seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amr.errors import AmrError

if TYPE_CHECKING:
    import torch

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5:0.05:0.95
RECALL_KS = (1, 5)
RECALL_IOUS = (0.5, 0.7)


@dataclass(frozen=True)
class RefineConfig:
    """How `refine` cuts and merges (see the module docstring)."""

    window: float = 2.0  # seconds of a fine window
    hop: float = 0.5  # seconds between fine windows
    threshold: float = 0.3  # of the way from the median fine score to a peak
    moments: int = 5  # spans kept per recording

    def __post_init__(self) -> None:
        if not (0 < self.hop <= self.window and 0 < self.threshold < 1 and self.moments >= 1):
            raise AmrError(f"moments: need 0 < hop <= window, 0 < threshold < 1 and at least one moment, got {self}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Moment:
    start: float  # seconds
    end: float
    score: float


@dataclass(frozen=True)
class MomentQuery:
    """A query and where its sound is: ``windows`` (start, end) in seconds of ``recording``."""

    id: str
    text: str
    recording: str
    windows: tuple[tuple[float, float], ...]


def fine_spans(frames: int, frames_per_second: float, config: RefineConfig) -> list[tuple[int, int]]:
    """[start, end) frame spans of the fine windows of a sequence of ``frames``
    frames: every ``hop``, the last one ending with the sequence."""
    width = min(frames, max(1, round(config.window * frames_per_second)))
    step = max(1, round(config.hop * frames_per_second))
    starts = list(range(0, frames - width + 1, step))
    if starts[-1] + width < frames:
        starts.append(frames - width)
    return [(start, start + width) for start in starts]


def refine(scores: np.ndarray, spans: Sequence[tuple[float, float]], config: RefineConfig) -> list[Moment]:
    """Moments from the scores of a recording's fine windows (``spans`` in
    seconds, in time order), best first (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    centres = np.array([(a + b) / 2 for a, b in spans])
    half = config.hop / 2
    floor = float(np.median(scores))
    free = np.ones(len(scores), dtype=bool)
    moments: list[Moment] = []
    while free.any() and len(moments) < config.moments:
        peak = int(np.flatnonzero(free)[np.argmax(scores[free])])
        level = floor + config.threshold * (scores[peak] - floor)
        first = last = peak
        while first > 0 and free[first - 1] and scores[first - 1] >= level:
            first -= 1
        while last < len(scores) - 1 and free[last + 1] and scores[last + 1] >= level:
            last += 1
        low, high = first, last  # its flanks, down to where scores rise again, are no moments of their own
        while low > 0 and free[low - 1] and scores[low - 1] <= scores[low]:
            low -= 1
        while high < len(scores) - 1 and free[high + 1] and scores[high + 1] <= scores[high]:
            high += 1
        free[low : high + 1] = False
        # a run that reaches the recording's first or last window reaches its edge
        start = spans[0][0] if first == 0 else centres[first] - half
        end = spans[-1][1] if last == len(scores) - 1 else centres[last] + half
        moments.append(Moment(float(start), float(end), float(scores[peak])))
    return moments


def grid_moments(scores: np.ndarray, spans: Sequence[tuple[float, float]]) -> list[Moment]:
    """The grid's windows as moments, best first (the unrefined answer)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [Moment(float(spans[i][0]), float(spans[i][1]), float(scores[i])) for i in order]


# --- a retriever's moments over embedding caches -------------------------------------------


def locate(queries: Sequence[MomentQuery], caches: Sequence[Any]) -> list[tuple[Any, int]]:
    """The (cache, row) of each query's recording: the item with that id, else
    the one whose audio file's stem it is; one that matches none (or two) is an error."""
    by_id: dict[str, tuple[Any, int]] = {}
    by_stem: dict[str, list[tuple[Any, int]]] = {}
    for cache in caches:
        for row, item in enumerate(cache.items):
            by_id.setdefault(item.id, (cache, row))
            by_stem.setdefault(Path(item.audio).stem, []).append((cache, row))
    found = []
    for query in queries:
        place = by_id.get(query.recording)
        stems = by_stem.get(query.recording, [])
        if place is None and len(stems) != 1:
            why = "two evaluated items" if stems else "no evaluated item"
            raise AmrError(f"query {query.id!r}: recording {query.recording!r} is {why} (by id or audio file name)")
        found.append(place or stems[0])
    return found


def retrieve_moments(
    retriever: Any, queries: Sequence[MomentQuery], caches: Sequence[Any], tagger: Any, config: RefineConfig = RefineConfig()
) -> tuple[list[list[Moment]], list[list[Moment]]]:
    """Each query's ranked moments in its recording, on the grid and refined:
    ``retriever`` an amr.model.retrievers.Retriever, ``caches`` the open embedding
    caches holding the recordings, ``tagger`` the amr.audio.encoder.AudioEncoder
    they were extracted with (for the tag probabilities of the fine windows)."""
    from amr.cache import Segment

    places = locate(queries, caches)
    vectors = retriever.encode_queries([q.text for q in queries])
    by_recording: dict[tuple[int, int], list[int]] = {}
    for q, (cache, row) in enumerate(places):
        by_recording.setdefault((id(cache), row), []).append(q)
    grid: list[list[Moment]] = [[] for _ in queries]
    refined: list[list[Moment]] = [[] for _ in queries]
    for members in by_recording.values():
        cache, row = places[members[0]]
        info = cache.info
        seconds = [(info.seconds(s.start), info.seconds(s.end)) for s in cache.segments(row)]
        grid_scores = vectors[members] @ retriever.encode_segments(cache, row).T
        sequence = cache.sequence(row)
        spans = fine_spans(len(sequence), info.frames_per_window / info.window_seconds, config)
        segments = [Segment(a, b, tagger.tags(sequence[a:b])) for a, b in spans]
        fine_scores = vectors[members] @ retriever.encode_spans(cache, row, segments).T
        fine_seconds = [(info.seconds(a), info.seconds(b)) for a, b in spans]
        for q, grid_row, fine_row in zip(members, grid_scores, fine_scores):
            grid[q] = grid_moments(grid_row, seconds)
            refined[q] = refine(fine_row, fine_seconds, config)
    return grid, refined


class MomentRefiner:
    """Refined spans for search results (``amr query --moments``): a long
    recording's fine-window vectors, from the caches an index was built from
    (kept for the last ``keep`` recordings), scored against the query."""

    def __init__(self, retriever: Any, cache_paths: Sequence[str], tagger: Any, config: RefineConfig = RefineConfig(), keep: int = 64):
        from amr.cache import EmbeddingCache

        missing = [p for p in cache_paths if not Path(p).is_file()]
        if missing:
            raise AmrError(f"refined moments need the caches the index was built from; missing: {', '.join(missing)}")
        self.retriever, self.tagger, self.config, self.keep = retriever, tagger, config, keep
        self.caches = [EmbeddingCache(Path(p)) for p in cache_paths]
        self._fine: dict[str, tuple[np.ndarray, list[tuple[float, float]]]] = {}

    def close(self) -> None:
        for cache in self.caches:
            cache.close()

    def span(self, item_id: str, query: np.ndarray, around: tuple[float, float]) -> tuple[float, float] | None:
        """The refined moment of the item's recording for ``query`` that overlaps
        the matching grid window ``around`` most (else the best one), or None
        for an item the grid keeps whole (its span is the clip)."""
        fine = self._vectors(item_id)
        if fine is None:
            return None
        vectors, spans = fine
        moments = refine(vectors @ query, spans, self.config)
        best = next((m for m in moments if iou((m.start, m.end), around) > 0), moments[0])  # moments are best first
        return best.start, best.end

    def _vectors(self, item_id: str) -> tuple[np.ndarray, list[tuple[float, float]]] | None:
        from amr.cache import Segment

        if item_id not in self._fine:
            cache, row = self._find(item_id)
            if cache.segments_per_item[row] < 2:
                return None
            info, sequence = cache.info, cache.sequence(row)
            spans = fine_spans(len(sequence), info.frames_per_window / info.window_seconds, self.config)
            segments = [Segment(a, b, self.tagger.tags(sequence[a:b])) for a, b in spans]
            if len(self._fine) >= self.keep:
                self._fine.pop(next(iter(self._fine)))
            seconds = [(info.seconds(a), info.seconds(b)) for a, b in spans]
            self._fine[item_id] = (self.retriever.encode_spans(cache, row, segments), seconds)
        return self._fine[item_id]

    def _find(self, item_id: str) -> tuple[Any, int]:
        for cache in self.caches:
            try:
                return cache, cache.index_of(item_id)
            except AmrError:
                continue
        caches = ", ".join(str(c.path) for c in self.caches)
        raise AmrError(f"item {item_id!r} is in none of the index's caches ({caches}); extract and index again")


def evaluate_moments(
    path: Path,
    checkpoints: Sequence[Path],
    cache_paths: Sequence[Path],
    *,
    zero_shot: bool = False,
    audio_weights: Path | None = None,
    device: torch.device | str = "cpu",
    config: RefineConfig = RefineConfig(),
) -> dict[str, Any]:
    """`amr evaluate --moments FILE`: each model's moment metrics on the grid and
    refined, for the queries of ``path`` (`read_moments`) in the recordings of
    the caches; the tagger is the caches' audio
    model (``audio_weights``, else found as `amr extract` finds it)."""
    from amr.audio.encoder import ClipEmbedder
    from amr.cache import open_caches
    from amr.evaluate import make_scorers

    queries = read_moments(path)
    scorers, _ = make_scorers(checkpoints, [], zero_shot, False, False, device)
    caches = open_caches(cache_paths)
    try:
        tagger = ClipEmbedder.for_collection(caches[0].info, caches[0].path, audio_weights).encoder
        truths = [q.windows for q in queries]
        models = []
        for scorer in scorers:
            grid, refined = retrieve_moments(scorer.retriever, queries, caches, tagger, config)  # type: ignore[attr-defined]
            models.append({"name": scorer.name, "grid": moment_metrics(grid, truths), "refined": moment_metrics(refined, truths)})
    finally:
        for cache in caches:
            cache.close()
    recordings = len({q.recording for q in queries})
    return {"source": str(path), "queries": len(queries), "recordings": recordings, "refine": config.as_dict(), "models": models}


# --- metrics --------------------------------------------------------------------------------


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal intersection over union of two [start, end] spans."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def average_precision(predicted: Sequence[Moment], truth: Sequence[tuple[float, float]], threshold: float) -> float:
    """AP of spans ranked by score against ground-truth windows at one IoU
    threshold: each prediction, in order, takes the unmatched window it
    overlaps most if that IoU reaches the threshold; AP is the area under the
    interpolated precision-recall curve (ActivityNet's, as QVHighlights')."""
    matched = [False] * len(truth)
    hits = []
    for moment in sorted(predicted, key=lambda m: -m.score):
        overlaps = [(iou((moment.start, moment.end), w), j) for j, w in enumerate(truth) if not matched[j]]
        best = max(overlaps, default=(0.0, -1))
        hit = best[0] >= threshold
        if hit:
            matched[best[1]] = True
        hits.append(hit)
    if not hits:
        return 0.0
    tp = np.cumsum(hits)
    precision = np.concatenate([[0.0], tp / np.arange(1, len(hits) + 1), [0.0]])
    recall = np.concatenate([[0.0], tp / len(truth), [1.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def moment_metrics(predicted: Sequence[Sequence[Moment]], truths: Sequence[Sequence[tuple[float, float]]]) -> dict[str, float]:
    """R1@0.5, R1@0.7, R5@0.5, R5@0.7, mAP@0.5, mAP@0.75 and mAP (over
    IOU_THRESHOLDS) of each query's ranked moments, averaged over queries, in [0, 1]."""
    if not truths:
        raise ValueError("no queries")
    out: dict[str, float] = {}
    for k in RECALL_KS:
        for threshold in RECALL_IOUS:
            found = [_hit(ranked[:k], truth, threshold) for ranked, truth in zip(predicted, truths)]
            out[f"R{k}@{threshold}"] = float(np.mean(found))
    aps = np.array([[average_precision(ranked, truth, t) for t in IOU_THRESHOLDS] for ranked, truth in zip(predicted, truths)])
    out["mAP@0.5"] = float(aps[:, 0].mean())
    out["mAP@0.75"] = float(aps[:, IOU_THRESHOLDS.index(0.75)].mean())
    out["mAP"] = float(aps.mean())
    return out


def _hit(moments: Sequence[Moment], truth: Sequence[tuple[float, float]], threshold: float) -> bool:
    return any(iou((m.start, m.end), w) >= threshold for m in moments for w in truth)


# --- annotation files -----------------------------------------------------------------------


def read_moments(path: Path) -> list[MomentQuery]:
    """The queries of a Clotho-Moment (lighthouse JSON Lines) or CASTELLA (JSON) file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AmrError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise AmrError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise AmrError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        entries = [(f"{path}: entry {i}", record) for i, record in enumerate(records, 1)]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise AmrError(f"{path}:{number}: invalid JSON: {e.msg}") from None
    queries = []
    for where, record in entries:
        if not isinstance(record, dict):
            raise AmrError(f"{where}: expected an object")
        parse: Callable[[str, dict[str, Any]], list[MomentQuery]] = _castella if "moments" in record else _lighthouse
        queries += parse(where, record)
    if not queries:
        raise AmrError(f"{path}: no moment queries")
    return queries


def _lighthouse(where: str, record: dict[str, Any]) -> list[MomentQuery]:
    for key in ("query", "vid", "relevant_windows"):
        if key not in record:
            raise AmrError(f"{where}: missing {key!r} (a Clotho-Moment line has qid, query, vid, relevant_windows)")
    qid = str(record.get("qid", where.rsplit(":", 1)[-1]))
    return [MomentQuery(qid, _text(where, record["query"]), _text(where, record["vid"]), _windows(where, record["relevant_windows"]))]


def _castella(where: str, record: dict[str, Any]) -> list[MomentQuery]:
    recording = _text(where, record.get("yid"))
    moments = record["moments"]
    if not isinstance(moments, list):
        raise AmrError(f"{where}: 'moments' must be a list")
    queries = []
    for k, moment in enumerate(moments):
        if not isinstance(moment, dict) or "local_caption" not in moment or "timestamps" not in moment:
            raise AmrError(f"{where}: moment {k + 1} needs local_caption and timestamps")
        text, windows = _text(where, moment["local_caption"]), _windows(where, moment["timestamps"])
        queries.append(MomentQuery(f"{recording}#{k}", text, recording, windows))
    return queries


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AmrError(f"{where}: expected a non-empty string, found {value!r}")
    return value


def _windows(where: str, value: object) -> tuple[tuple[float, float], ...]:
    windows = []
    for window in value if isinstance(value, list) else [None]:
        ok = isinstance(window, list) and len(window) == 2 and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in window)
        if not ok or not 0 <= window[0] < window[1]:  # type: ignore[index]
            raise AmrError(f"{where}: a window must be [start, end] in seconds with 0 <= start < end, found {window!r}")
        windows.append((float(window[0]), float(window[1])))  # type: ignore[index]
    if not windows:
        raise AmrError(f"{where}: no windows")
    return tuple(windows)
