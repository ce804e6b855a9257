"""The package as a user installs it: a (non-editable) wheel carries the bundled configs, and the
README's quick-start command runs from a folder that has no ``configs/``."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import TINY_CLI

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the sources (the checkout stays untouched), unpacked into a
    folder of its own as ``pip install --target`` does."""
    if importlib.util.find_spec("setuptools") is None:  # the build backend, without network access
        pytest.skip("setuptools is not installed, so no wheel can be built offline")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work / "dist", source],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (work / "dist").glob("skipganomaly-*.whl")
    target = work / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", target, wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    return wheel, target


def test_the_wheel_carries_the_bundled_configs(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        Path(n).name for n in names if n.startswith("skipganomaly/configs/") and n.endswith(".yaml")
    )
    in_tree = sorted(p.name for p in (ROOT / "src" / "skipganomaly" / "configs").glob("*.yaml"))
    assert shipped == in_tree and "digits-quick.yaml" in shipped


def test_the_quick_start_runs_from_the_installed_package(installed, tmp_path):
    _, target = installed
    env = dict(os.environ, PYTHONPATH=str(target))
    run = [sys.executable, "-m", "skipganomaly"]
    where = subprocess.run(
        [sys.executable, "-c", "import skipganomaly; print(skipganomaly.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout  # not the checkout
    listed = subprocess.run([*run, "configs"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "digits-quick" in listed.stdout, listed.stderr
    # The README's command, word for word but smaller, in a folder without configs/.
    assert not (tmp_path / "configs").exists()
    result = subprocess.run(
        [*run, "train", "--config", "configs/digits-quick.yaml", "--abnormal-class", "0", "--epochs", "1",
         "--output", tmp_path / "run", *TINY_CLI],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "preset: improved" in (tmp_path / "run" / "config.yaml").read_text()


def test_the_wheel_carries_the_inspection_page(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("index.html", "app.js", "app.css"):
        assert f"skipganomaly/resources/web/{asset}" in names, asset
