"""The Ray engine of `amr extract` on a local Ray cluster (2 CPUs): the same cache
as the local engine, failures reported the same way, resume after SIGKILL, and the message
where Ray is missing. Skipped where Ray is not installed (CI installs it), except the last."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.audio import write_bad_audio  # the awkward files of the local engine's test

import amr.extraction.decoding
from amr.audio.weights import ResolvedWeights, resolve_weights
from amr.cache import EmbeddingCache
from amr.datasets import load_dataset
from amr.errors import AmrError
from amr.extraction import ExtractReport, extract, failures_path, parts_folder
from amr.extraction.ray import RayEngine, RayOptions, _require_reachable
from amr.items import Item

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (starting one takes 5-10 s); the engine uses it as found."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def weights(mn04_weights: Path) -> ResolvedWeights:
    return resolve_weights("mn04_as", mn04_weights)


def ray_extract(items: list[Item], output: Path, weights: ResolvedWeights, engine: RayEngine | None = None, **options) -> ExtractReport:
    """amr.extraction.extract with the Ray engine (on the running local cluster unless given)."""
    return extract(items, output, weights, progress=False, engine=engine or RayEngine(RayOptions()), **options)


def assert_same_cache(a_path: Path, b_path: Path) -> None:
    """Every stored value equal, bit for bit, clip by clip (the engines finish clips in different orders,
    but the merge writes them in the items' order). Bit-identical because a window's frames do not
    depend on its batch company and both engines run the model on one thread (see amr.audio.encoder)."""
    with EmbeddingCache(a_path) as a, EmbeddingCache(b_path) as b:
        assert a.items == b.items and a.info == b.info
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.all_frames(), b.all_frames())
        np.testing.assert_array_equal(a.tags, b.tags)
        if a.info.augment_views:
            np.testing.assert_array_equal(a.all_frames(augmented=True), b.all_frames(augmented=True))
        for i in range(len(a)):  # segment spans and tags (several for a clip over 30 s)
            mine, theirs = a.segments(i), b.segments(i)
            assert [(s.start, s.end) for s in mine] == [(s.start, s.end) for s in theirs], a.items[i].id
            for x, y in zip(mine, theirs):
                np.testing.assert_array_equal(x.tags, y.tags)


def test_same_cache_as_the_local_engine(ray_cluster, shared: Path, weights, tmp_path: Path, monkeypatch) -> None:
    """A dozen real clips (mp3 and wav, 44.1 and 48 kHz, 5-30 s: partial windows, several windows), with
    two augmented views, so that views travel through the pipeline too."""
    items = load_dataset(shared / "data" / "sounds").items[::3][:12]
    local, ray = tmp_path / "local.h5", tmp_path / "ray.h5"
    extract(items, local, weights, augment_views=2, workers=1, progress=False)
    report = ray_extract(items, ray, weights, augment_views=2)
    assert report.computed == len(items) and not report.failures
    assert not parts_folder(ray).exists()
    assert_same_cache(local, ray)


def test_failures_and_long_files_as_the_local_engine(ray_cluster, weights, tmp_path: Path, monkeypatch) -> None:
    """Undecodable files (one truncated after windows were decoded) become the same failure records;
    a 190 s file, decoded in two segments of SEGMENT_WINDOWS windows, is reassembled in order, and
    its segment tags (a long clip) are the local engine's."""
    root = tmp_path / "awkward"
    root.mkdir()
    unreadable = sum(reason is not None for reason in write_bad_audio(root).values())
    rng = np.random.default_rng(2)
    sf.write(root / "audio" / "long 190 s.wav", (0.1 * rng.standard_normal(8000 * 190)).astype(np.float32), 8000)
    with open(root / "items.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "long 190 s.wav", "audio": "audio/long 190 s.wav"}) + "\n")
    items = load_dataset(root).items
    local, ray = tmp_path / "local.h5", tmp_path / "ray.h5"
    expected = extract(items, local, weights, workers=1, progress=False)
    report = ray_extract(items, ray, weights)
    assert len(report.failures) == len(expected.failures) == unreadable
    records = {path: sorted(map(json.loads, failures_path(path).read_text().splitlines()), key=lambda r: r["id"]) for path in (local, ray)}
    assert records[ray] == records[local]
    assert_same_cache(local, ray)
    with EmbeddingCache(ray) as cache:
        long = cache.index_of("long 190 s.wav")
        assert cache.lengths[long] == 19 * 32 > amr.extraction.decoding.SEGMENT_WINDOWS * 32
        assert len(cache.segments(long)) > 1


KILLABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import amr.extraction, amr.extraction.ray
    from amr.datasets import load_dataset
    from amr.extraction.ray import RayEngine
    from amr.audio.weights import resolve_weights
    amr.extraction.ray.CLIPS_PER_BLOCK = amr.extraction.ray.BATCH_WINDOWS = 2  # results trickle back, so parts appear mid-run
    engine = RayEngine()  # starts its own local cluster
    items = load_dataset(Path(sys.argv[1])).items[: int(sys.argv[4])]
    weights = resolve_weights("mn04_as", Path(sys.argv[3]))
    amr.extraction.extract(items, Path(sys.argv[2]), weights, progress=False, part_size=4, engine=engine)
    """
)


def descendants(pid: int) -> list[int]:
    children = [int(child) for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    return children + [d for child in children for d in descendants(child)]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_mid_run_then_rerun_completes_identically(ray_cluster, shared: Path, weights, tmp_path: Path, monkeypatch) -> None:
    dataset, count = shared / "data" / "sfx-dev", 40
    items = load_dataset(dataset).items[:count]
    reference = tmp_path / "reference.h5"
    extract(items, reference, weights, workers=1, progress=False)

    killed = tmp_path / "killed.h5"
    parts = parts_folder(killed)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(dataset), str(killed), str(weights.path), str(count)], cwd=REPO, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while len(list(parts.glob("part-*.h5"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ray_processes = {pid: command_line(pid) for pid in descendants(process.pid)}  # gcs_server, raylet, its workers and agents
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(ray_processes) >= 4, "the run should have started a local Ray cluster"
    # The cluster dies with its driver: its GCS, raylet and workers at once. Its two node agents
    # (ray::DashboardAgent, ray::RuntimeEnvAgent) idle on for about a minute, until their report
    # to the dead GCS times out (measured: 60-75 s); the test ends them by pid rather than wait.
    agents = [pid for pid, command in ray_processes.items() if "agent" in command.lower()]
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in ray_processes if pid not in agents) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in agents:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not [command for pid, command in ray_processes.items() if pid not in agents and alive(pid)], "the killed run's Ray processes"
    written = sorted(parts.glob("part-*.h5"))
    assert written and not killed.exists(), "the run should have been killed mid-way"
    for part in written:  # every part left behind is a complete, readable cache
        with EmbeddingCache(part) as cache:
            assert len(cache) == 4

    report = ray_extract(items, killed, weights)
    assert report.reused >= 8 and report.computed == count - report.reused
    assert not parts.exists()
    assert_same_cache(reference, killed)


JOINING = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import amr.extraction
    from amr.datasets import load_dataset
    from amr.extraction.ray import RayEngine, RayOptions
    from amr.audio.weights import resolve_weights
    engine = RayEngine(RayOptions(address=sys.argv[5]))
    items = load_dataset(Path(sys.argv[1])).items[: int(sys.argv[4])]
    amr.extraction.extract(items, Path(sys.argv[2]), resolve_weights("mn04_as", Path(sys.argv[3])), progress=False, engine=engine)
    """
)


def test_joins_a_running_cluster(ray_cluster, shared: Path, weights, tmp_path: Path) -> None:
    """--ray-address: another process's driver runs its extraction on this module's cluster (whose
    address it gets), which is left running; a port where no cluster listens is refused at once."""
    dataset, count = shared / "data" / "sounds", 3
    local, joined = tmp_path / "local.h5", tmp_path / "joined.h5"
    extract(load_dataset(dataset).items[:count], local, weights, workers=1, progress=False)
    address = ray_cluster.get_runtime_context().gcs_address
    run = subprocess.run(
        [sys.executable, "-c", JOINING, str(dataset), str(joined), str(weights.path), str(count), address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert_same_cache(local, joined)
    assert ray_cluster.is_initialized() and ray_cluster.cluster_resources()["CPU"] == 2
    with pytest.raises(AmrError, match=r"^--ray-address 127.0.0.1:1: no Ray cluster answers there \(.*\); give its head node as host:port"):
        _require_reachable("127.0.0.1:1")  # what ray_session checks before joining (Ray would retry for minutes)


def test_gpu_actors_without_gpus_are_refused(ray_cluster, shared: Path, weights, tmp_path: Path, monkeypatch) -> None:
    items = load_dataset(shared / "data" / "sounds").items[:1]
    with pytest.raises(AmrError, match=r"^--num-gpus 1: the Ray cluster has 0 GPUs; use CPU actors"):
        ray_extract(items, tmp_path / "gpu.h5", weights, engine=RayEngine(RayOptions(num_gpus=1)))


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(AmrError, match=r"^--engine ray needs Ray, which is not installed here: pip install amr\[ray\]$"):
        RayEngine(RayOptions())
