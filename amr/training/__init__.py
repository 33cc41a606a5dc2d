"""`amr train`: fit the retrieval model on (caption, clip) pairs of cached embeddings.

Protocol (Primus & Widmer 2024): every caption of every train-split clip is a
training pair; the loss is NT-Xent over the batch (other captions of the same
clip are masked, not negatives); AdamW with per-group learning rates (new
layers vs the pretrained text encoder), a warm-up, then cosine decay.

Where it starts: by default from the zero-shot model (amr.model.heads), so that
training can only build on what the untrained hybrid already does; model
selection validates before the first step (epoch 0) and after every epoch and
keeps the best, which may be epoch 0 (the zero-shot model itself), and weight
decay pulls every learned correction back toward that start. Validation is
the val split, or (``validation="concepts"``) train items held out because
their captions share no word with any other train item: concepts the model
never trains on, which a val split of the same concepts cannot show.

The kept model is the start interpolated with the trained weights
(``interpolation``, WiSE-FT); ``metadata_dropout`` of the pairs train without
their metadata, the case of items that have none (see amr.config.TrainConfig).

Data: all frames of the caches are read into memory once (float16). A cache
with SpecAugmented views gives each clip one random view per epoch. A cache
without a val split gives the train items whose id hashes to 0 mod 10 (a
fixed 10%) to validation. With ``metadata = ("captions",)`` a pair's metadata
is another caption of the same clip (random per epoch in training; in
validation the next caption, so a query never meets its own sentence).

Reproducible and resumable: all randomness of epoch e derives from (seed, e),
and after every epoch the state (weights, Adam, scheduler, history) is saved
atomically, so `--resume` after a Ctrl-C or a kill continues exactly as an
uninterrupted run would.

Modules: amr.training.data (the caches in memory, the pairs, each epoch's plan),
amr.training.validation (the metrics of model selection), amr.training.loop (the
run: optimizer, epochs, selection, checkpoints, resume).
"""

from amr.training.data import concept_holdout
from amr.training.loop import TrainResult, train
from amr.training.validation import validate

__all__ = ["TrainResult", "concept_holdout", "train", "validate"]
