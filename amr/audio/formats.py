"""Audio files by suffix (lower case, with the dot): the one list of what amr reads, recognises, looks up and serves.

Light (no imports): the dataset readers and the server use it, and the CLI may at start-up.
"""

from __future__ import annotations

RIFF_SUFFIXES = (".wav", ".wave", ".bwf")  # WAV and Broadcast WAV (RIFF, RF64, BW64)
AIFF_SUFFIXES = (".aif", ".aiff", ".aifc")
# What the decoder (libsndfile 1.2) reads: the files a plain folder's walk keeps.
DECODABLE_SUFFIXES = (*RIFF_SUFFIXES, ".flac", ".mp3", ".ogg", ".oga", ".opus", *AIFF_SUFFIXES)
# Audio that libsndfile does not decode: listed so that such files are reported, not silently passed over.
UNDECODABLE_SUFFIXES = (".m4a", ".mp4", ".aac", ".wma", ".ape", ".wv")
# A downloaded dataset's clip is looked up with these, in this order (WavCaps tries its FLAC first).
DATASET_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
# What browsers expect of audio served to them; mimetypes would answer from the
# machine's /etc/mime.types (audio/x-wav, ...).
MEDIA_TYPES = {
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".aif": "audio/aiff",
    ".aiff": "audio/aiff",
    ".m4a": "audio/mp4",
}
