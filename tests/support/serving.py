"""The web app in a thread for tests, and an index rewritten with a two-segment item."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from amr.index.reader import open_index
from amr.index.store import Rows, write_index
from amr.query import Searcher
from amr.server.app import LocalServer, create_app

# The library folder of the `library_index` fixture (tests/conftest.py): its path → the shared sounds clip copied there
FILES = {
    "Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3": "bigsoundbank-dog.mp3",
    "Animals/ANMLCat_Meowing Cat_BSB_FARM.mp3": "bigsoundbank-cat.mp3",
    "Animals/Birds/rooster at dawn.mp3": "bigsoundbank-rooster.mp3",
    "Weather/THUN_Rolling Thunder_JD_STORM.wav": "esc50-2-104105-A-19.wav",
    "Weather/rain from a car.wav": "esc50-3-132852-A-10.wav",
    "Transport/train passing.wav": "freesound-train.wav",
    "0001.wav": "freesound-applause.wav",  # no metadata at all: its name has no word
}


UPLOAD_LIMIT = 1 << 20  # of the fake server: the test clips are smaller, but not all (freesound-train.wav is 3 MB)


def split_in_two(path: Path, item_id: str, stand_in_id: str) -> None:
    """Rewrite the index at ``path`` with item ``item_id`` as a long recording
    of two segments: its first half holds the vector and tags of ``stand_in_id``,
    its second half its own, so a search for it finds it at half its length.
    (A stand-in for segments computed by `amr index`, which one of its callers
    tests; here only what the API and the page do with a start time matters.)"""
    index = open_index(path)
    if not index.single_rows:
        raise ValueError(f"{path}: has segments already")
    ids = index.ids()
    long, stand_in = ids.index(item_id), ids.index(stand_in_id)
    rows = index.rows()
    order = [*range(long), stand_in, *range(long, len(ids))]  # rows in item order, one more before the long item's own
    row_item = np.array([*range(long), long, *range(long, len(ids))])
    spans = rows.spans[order].copy()
    half = float(rows.spans[long, 1]) / 2
    spans[long] = (0.0, half)
    spans[long + 1, 0] = half
    write_index(path, index.header, Rows(rows.items, row_item, spans, rows.vectors[order], rows.tags[order], rows.tag_probs[order]))


@contextmanager
def running(searcher: Searcher, upload_limit: int = UPLOAD_LIMIT) -> Iterator[str]:
    """The app over ``searcher`` answering on a free port of 127.0.0.1, in a thread; its base URL."""
    local = LocalServer(create_app(searcher, upload_limit), "127.0.0.1", 0)
    thread = threading.Thread(target=local.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not local.server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield local.url.rstrip("/")
    finally:
        local.stop()
        thread.join(timeout=30)
