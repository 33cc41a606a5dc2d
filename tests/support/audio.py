"""Awkward audio files (odd rates, NaN, truncated, not audio) with the failure each must give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def write_bad_audio(root: Path) -> dict[str, str | None]:
    """A generic dataset of awkward files; maps id → expected failure reason (None: must work)."""
    rng = np.random.default_rng(0)

    def noise(sr: int, seconds: float, channels: int = 1) -> np.ndarray:
        return (0.1 * rng.standard_normal((int(sr * seconds), channels))).astype(np.float32)

    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "rate 8k.wav", noise(8000, 2.0), 8000)
    sf.write(audio / "rate 96k.flac", noise(96000, 1.5), 96000)
    sf.write(audio / "six channels.wav", noise(44100, 1.0, 6), 44100)
    sf.write(audio / "silence.wav", np.zeros(32000, np.float32), 32000)
    sf.write(audio / "très court ñ.ogg", noise(44100, 0.05), 44100)
    sf.write(audio / "long 35 s.wav", noise(16000, 35.0), 16000)
    with_nan = noise(32000, 1.0)
    with_nan[100] = np.nan
    sf.write(audio / "nan.wav", with_nan, 32000, subtype="FLOAT")
    huge = noise(32000, 1.0)
    huge[5000] = 1e20  # finite in float32, but its log-mel power overflows
    sf.write(audio / "huge.wav", huge, 32000, subtype="FLOAT")
    garbage = rng.integers(0, 2**32, 8000, dtype=np.uint32)
    garbage[(garbage >> 23) & 0xFF == 0xFF] &= ~np.uint32(1 << 30)  # random bytes as float data, but no NaN or inf pattern
    sf.write(audio / "random floats.wav", garbage.view(np.float32), 8000, subtype="FLOAT")
    loud = noise(32000, 1.0)
    loud[::100] = 16.0  # +24 dB over full scale: a loud float master, embedded
    sf.write(audio / "loud float.wav", loud, 32000, subtype="FLOAT")
    (audio / "empty.wav").write_bytes(b"")
    (audio / "text.mp3").write_text("this is not audio\n" * 100)
    sf.write(audio / "whole.wav", noise(44100, 5.0), 44100, subtype="PCM_16")
    whole = (audio / "whole.wav").read_bytes()  # 44-byte header, then 5 s of 16-bit samples
    (audio / "truncated.wav").write_bytes(whole[: 44 + 2 * 2 * 44100])  # the header still says 5 s: 2 s remain
    (audio / "truncated.flac").write_bytes((audio / "rate 96k.flac").read_bytes()[:200])
    expected = {
        "rate 8k.wav": None,
        "rate 96k.flac": None,
        "six channels.wav": None,
        "silence.wav": None,
        "très court ñ.ogg": None,
        "long 35 s.wav": None,
        "nan.wav": "non-finite: NaN",
        "huge.wav": "out-of-range: samples up to 1e+20, beyond ±1000",
        "random floats.wav": "out-of-range: beyond ±1000 (full scale is ±1)",
        "loud float.wav": None,
        "empty.wav": "empty: empty",
        "text.mp3": "not-audio: not an audio file",
        "truncated.wav": "truncated: truncated: the header declares 5.00 s of audio, the file holds 2.00 s",
        "truncated.flac": "corrupt: corrupt or truncated audio",
    }
    with open(root / "items.jsonl", "w", encoding="utf-8") as f:
        for name in expected:
            f.write(json.dumps({"id": name, "audio": f"audio/{name}"}, ensure_ascii=False) + "\n")
    return expected
