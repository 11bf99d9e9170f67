"""`make setup`: the torch build comes from TORCH (never detected) and a change of it reinstalls torch.

Runs make against a throwaway VENV whose `python` only records its arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from deploy.launch import PROJECT_ROOT


def setup(venv: Path, *variables: str) -> list[str]:
    """The pip commands one `make setup` ran."""
    log = venv / "calls.log"
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH", "MAKE"))}
    subprocess.run(["make", "-s", "setup", f"VENV={venv}", *variables], cwd=PROJECT_ROOT, env=env, check=True, timeout=60)
    return log.read_text().splitlines()


def test_the_torch_build_is_chosen_by_variable_and_a_change_reinstalls(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {venv / "calls.log"}\n')
    fake.chmod(0o755)

    first = setup(venv)
    assert "-m pip install -q --force-reinstall torch==2.13.0" in first, f"expected the default CPU torch==2.13.0, found {first}"
    assert "-m pip install -q -e .[serve,test]" in first, f"expected the service and test extras, found {first}"
    assert setup(venv) == [], "expected nothing reinstalled when nothing changed"
    cuda = setup(venv, "TORCH=cu128")
    expected = "-m pip install -q --force-reinstall torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128"
    assert expected in cuda, f"expected the CUDA 12.8 build from PyTorch's index, found {cuda}"
    assert setup(venv, "TORCH=cu128") == [], "expected nothing reinstalled for the same build"
    back = setup(venv)
    assert "-m pip install -q --force-reinstall torch==2.13.0" in back, f"expected the CPU build reinstalled, found {back}"
