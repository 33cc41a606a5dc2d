"""The audio side: from a file to frame embeddings and AudioSet tags.

amr.audio.formats (the suffixes amr reads), amr.audio.frontend (decoding and
EfficientAT's log-mel front end), amr.audio.mobilenet (the MobileNetV3
network), amr.audio.weights (the checkpoints and their settings),
amr.audio.encoder (windows -> frames and tags), amr.audio.audioset (the
tagger's class names), amr.audio.peaks (waveform overviews for the page).
Kept light (nothing imported here) so that amr.audio.formats is cheap.
"""
