"""Fixtures: tiny OmniAvatar checkpoints written in the official layout, loaded once per session on CPU in fp32."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar.loading import CheckpointFiles, load_models
from model.omniavatar.tiny import TinyDirs, write_tiny


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
