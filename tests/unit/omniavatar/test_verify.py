"""`python -m model.omniavatar.verify`: a complete folder passes; a cut, missing or misshapen file fails, named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.omniavatar.tiny import TinyDirs, write_tiny
from model.omniavatar.verify import main

TINY = "configs/omniavatar-tiny.yaml"


@pytest.fixture(scope="module")
def complete(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny(root, sharded=True)
    return root


@pytest.fixture
def folder(complete: Path, tmp_path: Path) -> TinyDirs:
    shutil.copytree(complete, tmp_path / "models")
    return TinyDirs(tmp_path / "models")


def run(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(root), "--config", TINY])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_complete_folder_passes(complete: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(complete, capsys)
    assert code == 0, f"expected exit 0, found {code}: {err}"
    checks = [line for line in out.splitlines() if line.startswith("ok ")]
    assert len(checks) == 5, f"expected 5 passed checks (files, sizes, DiT, OmniAvatar, VAE/UMT5), found {out}"
    assert "3 DiT file(s)" in out and f"{complete} is complete" in out, f"expected the shards counted and a verdict, found {out}"


def test_a_cut_download_is_named(folder: TinyDirs, capsys: pytest.CaptureFixture[str]) -> None:
    shard = sorted(folder.base_dir.glob("diffusion_pytorch_model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    code, _, err = run(folder.root, capsys)
    assert code == 1, f"expected exit 1, found {code}"
    expected = f"{shard}: {len(data) - 100} bytes, its header says {len(data)}"
    assert expected in err, f"expected {expected!r}, found {err!r}"


def test_a_missing_file_is_named(folder: TinyDirs, capsys: pytest.CaptureFixture[str]) -> None:
    (folder.base_dir / "Wan2.1_VAE.pth").unlink()
    code, _, err = run(folder.root, capsys)
    assert code == 1 and "missing Wan VAE" in err and "Wan2.1_VAE.pth" in err, f"expected the VAE named missing, found {code}: {err!r}"


def test_a_wrong_shape_is_named(folder: TinyDirs, capsys: pytest.CaptureFixture[str]) -> None:
    shard = next(p for p in sorted(folder.base_dir.glob("diffusion_pytorch_model-*.safetensors")) if "blocks.0.self_attn.q.weight" in load_file(p))
    tensors = load_file(shard)
    tensors["blocks.0.self_attn.q.weight"] = torch.zeros(7, 7)
    save_file(tensors, shard)
    code, _, err = run(folder.root, capsys)
    assert code == 1 and "blocks.0.self_attn.q.weight" in err, f"expected the misshapen tensor named, found {code}: {err!r}"


def test_a_folder_without_a_model_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "holds neither Wan2.1-T2V-14B nor Wan2.1-T2V-1.3B" in err, f"expected one clear line, found {code}: {err!r}"
