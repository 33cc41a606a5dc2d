"""The weights registry: resolution order, hashes, downloads through a faked network."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest

from amr.audio import weights
from amr.audio.weights import EFFICIENTAT_AUDIO, WEIGHTS, ResolvedWeights, load_audio_model, resolve_weights
from amr.errors import AmrError

MN04 = WEIGHTS["mn04_as"]


class _Response(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


class FakeNetwork:
    """Stands in for urlopen: serves fixed bytes per URL, or fails like an offline machine."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []

    def __call__(self, url: str, timeout: float) -> _Response:
        self.requests.append(url)
        if url not in self.files:
            raise URLError("[Errno -3] Temporary failure in name resolution")
        return _Response(self.files[url])


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeNetwork:
    fake = FakeNetwork()
    monkeypatch.setattr(weights, "urlopen", fake)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    return fake


@pytest.fixture(scope="module")
def mn04_bytes(mn04_weights: Path) -> bytes:
    return mn04_weights.read_bytes()


def _corrupt(data: bytes) -> bytes:
    return data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]


def test_download_is_verified_and_cached(network: FakeNetwork, mn04_bytes: bytes, tmp_path: Path) -> None:
    network.files[MN04.url] = mn04_bytes
    resolved = resolve_weights("mn04_as")
    assert resolved == ResolvedWeights("mn04_as", tmp_path / "cache/amr" / MN04.file, MN04.sha256, 0.4)
    assert resolved.path.read_bytes() == mn04_bytes
    assert sorted(p.name for p in resolved.path.parent.iterdir()) == [MN04.file]  # no partial file left
    assert resolve_weights("mn04_as") == resolved
    assert network.requests == [MN04.url]  # the second call used the cache
    assert load_audio_model(resolved).embed_dim == 384


def test_corrupt_download_is_rejected(network: FakeNetwork, mn04_bytes: bytes, tmp_path: Path) -> None:
    network.files[MN04.url] = _corrupt(mn04_bytes)
    with pytest.raises(AmrError, match=f"{MN04.url}: the download has sha256 .* expected {MN04.sha256}"):
        resolve_weights("mn04_as")
    assert list((tmp_path / "cache/amr").iterdir()) == []


def test_offline_names_the_file_and_where_to_put_it(network: FakeNetwork) -> None:
    entry = WEIGHTS["mn40_as_ext"]
    with pytest.raises(AmrError) as error:
        resolve_weights("mn40_as_ext")
    message = str(error.value)
    assert message.startswith("mn40_as_ext_mAP_487.pt not found: download ")
    assert entry.url in message and "--audio-weights" in message and "$AMR_WEIGHTS_DIR" in message


def test_unknown_hash_is_computed_not_checked_and_says_so(network: FakeNetwork, capsys: pytest.CaptureFixture[str]) -> None:
    entry = WEIGHTS["mn20_as"]
    assert entry.sha256 is None
    network.files[entry.url] = b"some other bytes"
    resolved = resolve_weights("mn20_as")
    digest = hashlib.sha256(b"some other bytes").hexdigest()
    assert resolved.sha256 == digest
    assert resolved.width == 2.0
    warning = capsys.readouterr().err
    assert "cannot verify this file" in warning and entry.file in warning and digest in warning
    resolve_weights("mn20_as")  # once per file: the cached copy is not warned about again
    assert "cannot verify" not in capsys.readouterr().err


def test_known_hashes_are_checked(network: FakeNetwork, capsys: pytest.CaptureFixture[str]) -> None:
    """mn10_as's sha256 is pinned (the digest public projects record for the release file):
    other bytes under its name are refused; mn04_as verifies silently."""
    entry = WEIGHTS["mn10_as"]
    assert entry.sha256 == "0bd7dc2443af498c289a2e739f02ebb515d6aa3fd3ab9db539c86123ae368a4e"
    network.files[entry.url] = b"some other bytes"
    with pytest.raises(AmrError, match="the download has sha256 .* expected 0bd7dc24"):
        resolve_weights("mn10_as")
    assert all(len(e.sha256 or "") in (0, 64) for e in WEIGHTS.values())


def test_settings_travel_with_the_weights(mn04_weights: Path) -> None:
    """Sample rate, mel front end, window, stride and embedding size come from the registry entry."""
    resolved = resolve_weights("mn04_as", mn04_weights)
    assert resolved.audio == WEIGHTS["mn04_as"].audio == EFFICIENTAT_AUDIO
    audio = resolved.audio
    assert (audio.sample_rate, audio.mel.hop_length, audio.mel.n_mels, audio.window_seconds) == (32000, 320, 128, 10.0)
    assert audio.window_frames == 1000 and audio.model_stride == 32 and audio.frame_rate == 3.125
    assert resolved.embed_dim == load_audio_model(resolved).embed_dim == 384


def test_cached_file_needs_no_network(network: FakeNetwork, mn04_weights: Path, tmp_path: Path) -> None:
    cached = tmp_path / "cache/amr" / MN04.file
    cached.parent.mkdir(parents=True)
    shutil.copy(mn04_weights, cached)
    assert resolve_weights("mn04_as").path == cached
    assert resolve_weights(None).path == cached  # mn04_as is the default
    assert network.requests == []


def test_corrupt_cached_file_is_rejected(network: FakeNetwork, mn04_bytes: bytes, tmp_path: Path) -> None:
    cached = tmp_path / "cache/amr" / MN04.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_corrupt(mn04_bytes))
    with pytest.raises(AmrError, match=f"{cached}: sha256 .* is not that of {MN04.file}"):
        resolve_weights("mn04_as")


def test_weights_dir_comes_first(network: FakeNetwork, monkeypatch: pytest.MonkeyPatch, mn04_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my weights"
    folder.mkdir()
    shutil.copy(mn04_weights, folder / MN04.file)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    assert resolve_weights("mn04_as").path == folder / MN04.file
    assert network.requests == []


def test_unknown_name_lists_the_known_ones(network: FakeNetwork) -> None:
    with pytest.raises(AmrError, match="unknown audio model 'mn99_as'; known: mn01_as, mn02_as, mn04_as, .*mn40_as_ext"):
        resolve_weights("mn99_as")


def test_explicit_file(network: FakeNetwork, mn04_weights: Path, tmp_path: Path) -> None:
    assert resolve_weights(None, mn04_weights) == ResolvedWeights("mn04_as", mn04_weights, MN04.sha256, 0.4)
    renamed = tmp_path / "tagger.pt"
    shutil.copy(mn04_weights, renamed)
    assert resolve_weights(None, renamed) == ResolvedWeights("tagger", renamed, MN04.sha256, 0.4)
    assert resolve_weights("mn04_as", renamed).name == "mn04_as"
    assert network.requests == []


def test_explicit_file_errors(network: FakeNetwork, mn04_weights: Path, mn04_bytes: bytes, tmp_path: Path) -> None:
    with pytest.raises(AmrError, match="missing.pt: no such weights file"):
        resolve_weights(None, tmp_path / "missing.pt")
    with pytest.raises(AmrError, match="is the mn04_as checkpoint, not mn40_as"):
        resolve_weights("mn40_as", mn04_weights)
    bad = tmp_path / MN04.file
    bad.write_bytes(_corrupt(mn04_bytes))
    with pytest.raises(AmrError, match="sha256 .* is not that of"):
        resolve_weights(None, bad)
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    with pytest.raises(AmrError, match="notes.pt: not a PyTorch checkpoint"):
        resolve_weights(None, notes)


def test_mismatched_state_dict_names_the_file(mn04_weights: Path) -> None:
    wrong_width = ResolvedWeights("mn10_as", mn04_weights, MN04.sha256 or "", 1.0)
    with pytest.raises(AmrError, match=f"{mn04_weights}: not an EfficientAT MobileNetV3 checkpoint of width 1.0"):
        load_audio_model(wrong_width)


def test_a_replaced_file_is_hashed_again(network: FakeNetwork, mn04_bytes: bytes, tmp_path: Path) -> None:
    cached = tmp_path / "cache/amr" / MN04.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(mn04_bytes)
    assert resolve_weights("mn04_as").sha256 == MN04.sha256
    mtime = cached.stat().st_mtime_ns
    cached.write_bytes(_corrupt(mn04_bytes))
    os.utime(cached, ns=(mtime + 10**9, mtime + 10**9))  # a replacement a second later (the clock may be coarser than this test)
    with pytest.raises(AmrError, match="is not that of"):
        resolve_weights("mn04_as")
