"""`pip install .` gives the two command-line clients with their own dependencies only: installed alone into a
fresh virtual environment (no torch, no Ray), avatar-stream streams a video from the running service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import PROJECT_ROOT
from tests.helpers import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from tests.integration.conftest import Service

SERVICE_ONLY = ("torch", "ray", "numpy", "pydantic", "yaml", "fastapi", "diffusers")
SOURCES = ("pyproject.toml", "README.md", "client", "model", "deployments")


def pip(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"expected pip {' '.join(args[:2])} to succeed, found {result.returncode}: {result.stderr[-2000:]}"


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding `pip install .` of a copy of the sources (pip of this venv installs into it: no ensurepip)."""
    work = tmp_path_factory.mktemp("light-client")
    (work / "src").mkdir()
    for name in SOURCES:  # a copy: building in place would leave build/ and egg-info in the checkout
        source = PROJECT_ROOT / name
        shutil.copytree(source, work / "src" / name, ignore=shutil.ignore_patterns("__pycache__")) if source.is_dir() else shutil.copy(source, work / "src")
    pip("wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(work / "src"), cwd=work)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True, timeout=60)
    wheel = next((work / "dist").glob("*.whl"))
    pip("--python", str(work / "venv" / "bin" / "python"), "install", "-q", str(wheel), cwd=work)
    return work / "venv"


def test_the_client_installs_without_the_service(client_venv: Path) -> None:
    probe = f"import importlib.util as u; print([m for m in {SERVICE_ONLY!r} if u.find_spec(m)])"
    found = subprocess.run([str(client_venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]", f"expected none of {SERVICE_ONLY} in the client's venv, found {found}"


def test_the_installed_client_streams_from_the_service(client_venv: Path, service: Service, tmp_path: Path) -> None:
    command = [str(client_venv / "bin" / "avatar-stream"), "--server", service.url, "--prompt", "a man talking",
               "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--seed", "3", "--steps", "1",
               "--output-dir", "out", "--concatenate"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"expected avatar-stream to succeed, found {result.returncode}: {result.stderr[-2000:]}"
    segments = sorted(p.name for p in (tmp_path / "out").glob("segment_*.mp4"))
    assert len(segments) >= 2, f"expected the example's segments saved, found {segments}"
    assert (tmp_path / "out" / "video.mp4").stat().st_size > 0, "expected the joined video.mp4"
