"""`amr extract`: every clip of a dataset -> its MobileNetV3 frame-embedding sequence and tags.

The pipeline, built for throughput on a few CPU cores and flat memory:

* worker processes (`amr.extraction.workers`, one per available core:
  `default_workers`) decode, resample and compute the log-mel of clips
  (`amr.extraction.decoding`, in segments of a few minutes, so an hour-long file
  never sits in memory whole), a bounded number of tasks in flight, and run
  the windows through the model in their own `WindowBatcher`
  (`amr.extraction.batching`), which runs full batches of one bucket width
  through the `amr.audio.encoder.AudioEncoder` (exact at every clip length,
  bit-repeatable whatever the batch company): each core decodes and embeds,
  one torch thread per worker, and only frames travel back (with the model on
  a GPU, the main process runs the one batcher instead: `embed_items`);
* the main process reassembles each clip from its windows
  (`amr.extraction.clips`, shared with the Ray engine, amr.extraction.ray) and
  computes its tags and, for a long recording, the tags of each segment
  (`AudioEncoder.segments`, on the cache's `SegmentGrid`), stored in the cache
  so that an index can cut exactly those spans;
* a `PartWriter` (`amr.extraction.parts`) writes finished clips in *parts*
  (complete cache files, renamed into place) every PART_SIZE clips; a killed
  run loses at most the clips since the last part, and a rerun skips what the
  cache and the parts already hold, then merges everything into the final
  cache (`merge_parts`).

Incremental: a rerun on the same dataset computes only the clips that are new
or whose file changed: a clip is reused when the cache (or a part) holds the
same id from the same path with the same size and modification time
(`item_key`; Item.audio_size and Item.audio_mtime_ns, which load_dataset
fills). Clips that are no longer in the dataset are dropped from the merged
cache; clips whose metadata or captions changed are refreshed without
recomputing.

A cache holds the segment tags of one grid: a run with another grid (or other
augmented views, or another model) on an existing cache, or beside parts
written with another one, is refused rather than mixed; extract into another
file, or delete the cache. (Recomputing segment tags from the stored float16
frames would give values a fresh extraction does not.)

One run at a time per cache: a run holds the cache's lock (amr.files.exclusive)
from start to end, and a second run on the same cache stops at once with a
message naming the holder. Parts and temporary files carry names unique to the
run that wrote them, and the merge deletes only the parts it merged, so no run
can overwrite or delete another's work even without the lock.

The run itself (the lock, the engine, the report) is `amr.extraction.run`.

Clips that cannot be embedded are reported and listed in
``<cache>.failures.jsonl``, one JSON object per line: ``id``, ``audio``,
``kind`` (missing, empty, not-audio, corrupt, truncated, non-finite, out-of-range,
no-samples; see amr.audio.frontend) and ``reason``. None of them is in the cache
(truncated files included: see amr.audio.frontend for why); the run goes on.
"""

from amr.extraction.parts import parts_folder
from amr.extraction.run import ExtractReport, extract, failures_path

__all__ = ["ExtractReport", "extract", "failures_path", "parts_folder"]
