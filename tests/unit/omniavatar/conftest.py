"""Fixtures: tiny OmniAvatar checkpoints written in the official layout, loaded once per session on CPU in fp32."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar.loading import CheckpointFiles, load_models
from model.omniavatar.tiny import TinyDirs, write_tiny


@pytest.fixture(scope="package", autouse=True)
def one_cpu_thread():
    """Tiny tensors run fastest on one thread, and on a shared CPU several threads busy-wait each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> TinyDirs:
    return write_tiny(tmp_path_factory.mktemp("omniavatar-tiny"))


@pytest.fixture(scope="session")
def tiny_files(tiny_dirs) -> CheckpointFiles:
    return CheckpointFiles.find(tiny_dirs.base_dir, tiny_dirs.omniavatar_dir, tiny_dirs.wav2vec_dir)


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    files = CheckpointFiles.find(tiny_dirs.base_dir, tiny_dirs.omniavatar_dir, tiny_dirs.wav2vec_dir)
    return load_models(files, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def tiny_config(tiny_dirs):
    """configs/omniavatar-tiny.yaml pointed at the session's tiny folders."""
    from model.config import load_model_config

    options = {"base_dir": str(tiny_dirs.base_dir), "omniavatar_dir": str(tiny_dirs.omniavatar_dir),
               "wav2vec_dir": str(tiny_dirs.wav2vec_dir)}  # fmt: skip
    return load_model_config("configs/omniavatar-tiny.yaml", {"options": options})


@pytest.fixture(scope="session")
def tiny_backend(tiny_config):
    from model.omniavatar.backend import OmniAvatarBackend

    return OmniAvatarBackend(tiny_config)
