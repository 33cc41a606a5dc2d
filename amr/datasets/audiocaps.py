"""AudioCaps: ``{train,val,test}.csv`` (audiocap_id, youtube_id, start_time,
caption), one row per caption, grouped here into one item per clip with the
YouTube id as item id. Audio is looked up by YouTube id in ``audio/{split}/``,
``{split}/``, ``audio/`` and the root, as ``<id>`` or ``Y<id>`` (the AudioSet
download naming) with extension .wav, .flac, .mp3 or .ogg, in that order.

Optional closed-set tags come from the AudioSet labels: ``class_labels_indices.csv``
(index, mid, display_name) names the mids in the segment CSVs
(balanced_train_segments.csv, unbalanced_train_segments.csv, eval_segments.csv),
giving ``metadata = {"tags": [display names]}``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from amr.audio.formats import DATASET_SUFFIXES
from amr.errors import AmrError
from amr.items import SPLITS, Item

from .common import FolderListings, Problems, ReadOptions, RowError, read_csv

CSV_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLASS_LABELS = "class_labels_indices.csv"
SEGMENT_FILES = ("balanced_train_segments.csv", "unbalanced_train_segments.csv", "eval_segments.csv")


def detect(root: Path) -> bool:
    return any(_is_audiocaps_csv(root / f"{split}.csv") for split in SPLITS)


def _is_audiocaps_csv(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return "audiocap_id" in f.readline()


@dataclass
class _Clip:
    split: str
    where: str  # file:line of its first caption row
    captions: list[str] = field(default_factory=list)


def read_items(root: Path, options: ReadOptions) -> list[Item]:
    problems = options.problems
    clips = _read_clips(root, problems, options.encoding)
    tags = _read_tags(root, set(clips), problems, options.encoding)
    finder = _AudioFinder(root)
    items = []
    for youtube_id, clip in clips.items():
        audio = finder.find(youtube_id, clip.split)
        if audio is None:
            problems.report(
                clip.where,
                f"no audio for youtube_id {youtube_id!r} (looked for {youtube_id} or Y{youtube_id} "
                f"with {'/'.join(DATASET_SUFFIXES)} in {finder.describe(clip.split)})",
            )
            continue
        metadata: dict[str, str | list[str]] = {"tags": tags[youtube_id]} if tags.get(youtube_id) else {}
        items.append(Item(youtube_id, str(audio), clip.split, metadata, clip.captions))
    return items


def _read_clips(root: Path, problems: Problems, encoding: str | None) -> dict[str, _Clip]:
    paths = [(split, root / f"{split}.csv") for split in SPLITS if (root / f"{split}.csv").is_file()]
    if not paths:
        raise AmrError(f"{root}: none of {', '.join(f'{split}.csv' for split in SPLITS)} exists")
    clips: dict[str, _Clip] = {}
    for split, path in paths:
        for line, row in read_csv(path, CSV_COLUMNS, problems, encoding):
            where, youtube_id, caption = f"{path}:{line}", row["youtube_id"], row["caption"]
            clip = clips.get(youtube_id)
            if not youtube_id:
                problems.report(where, "empty youtube_id")
            elif not caption:
                problems.report(where, "empty caption")
            elif clip is None:
                clips[youtube_id] = _Clip(split, where, [caption])
            elif clip.split != split:
                problems.report(where, f"youtube_id {youtube_id!r} is already in split {clip.split} ({clip.where})")
            else:
                clip.captions.append(caption)
    return clips


class _AudioFinder:
    """Finds a clip's file by listing each candidate folder once (AudioCaps has ~50k clips)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listings = FolderListings()

    def folders(self, split: str) -> tuple[Path, ...]:
        return (self.root / "audio" / split, self.root / split, self.root / "audio", self.root)

    def describe(self, split: str) -> str:
        return ", ".join(f"{folder.relative_to(self.root)}/" for folder in self.folders(split))

    def find(self, youtube_id: str, split: str) -> Path | None:
        for folder in self.folders(split):
            names = self._listings.names(folder)
            for stem in (youtube_id, f"Y{youtube_id}"):
                for extension in DATASET_SUFFIXES:
                    if stem + extension in names:
                        return folder / (stem + extension)
        return None


def _read_tags(root: Path, wanted: set[str], problems: Problems, encoding: str | None) -> dict[str, list[str]]:
    """youtube id → AudioSet display names, for the wanted ids; {} without segment CSVs."""
    segment_paths = [root / name for name in SEGMENT_FILES if (root / name).is_file()]
    if not segment_paths:
        return {}
    labels_path = root / CLASS_LABELS
    if not labels_path.is_file():
        raise AmrError(f"{segment_paths[0]}: its labels are AudioSet mids, but {CLASS_LABELS} (which names them) is missing")
    names = _class_names(labels_path, problems, encoding)
    tags: dict[str, list[str]] = {}
    for path in segment_paths:
        try:
            _add_segment_tags(path, wanted, names, tags, problems)
        except UnicodeDecodeError as e:
            raise AmrError(f"{path}: not UTF-8 ({e.reason}), as AudioSet's segment files are") from None
    return tags


def _add_segment_tags(path: Path, wanted: set[str], names: dict[str, str], tags: dict[str, list[str]], problems: Problems) -> None:
    """Streamed line by line (the unbalanced segment file has two million lines), as UTF-8."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if line.startswith("#") or not line.strip():
                continue
            youtube_id = line.split(",", 1)[0].strip()
            if youtube_id not in wanted:
                continue
            labels = problems.attempt(f"{path}:{number}", _segment_labels, line, names)
            if labels:
                tags[youtube_id] = list(dict.fromkeys(tags.get(youtube_id, []) + labels))


def _class_names(path: Path, problems: Problems, encoding: str | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for line, row in read_csv(path, ("mid", "display_name"), problems, encoding):
        if row["mid"] and row["display_name"]:
            names[row["mid"]] = row["display_name"]
        else:
            problems.report(f"{path}:{line}", "empty mid or display_name")
    return names


def _segment_labels(line: str, names: dict[str, str]) -> list[str]:
    """The display names of one segment line: ``YTID, start, end, "mid,mid,..."``."""
    fields = next(csv.reader([line], skipinitialspace=True))
    if len(fields) != 4:
        raise RowError(f"expected 4 fields (YTID, start_seconds, end_seconds, positive_labels), found {len(fields)}")
    mids = [mid.strip() for mid in fields[3].split(",") if mid.strip()]
    unknown = [mid for mid in mids if mid not in names]
    if unknown:
        raise RowError(f"unknown label {', '.join(unknown)} (not in {CLASS_LABELS})")
    return [names[mid] for mid in mids]
