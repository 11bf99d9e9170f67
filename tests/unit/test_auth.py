"""The pure parts of deployments/auth.py: reading keys, taking file paths out of a /health body."""

from __future__ import annotations

import pytest

from deployments.auth import AuthOptions, load_keys, public_health


def test_keys_come_from_the_environment_and_the_file(tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nfile-1\n\n  file-2  # the second\n")
    options = AuthOptions(enabled=True, keys_env="KEYS", keys_file=str(keys_file))
    found = load_keys(options, {"KEYS": "env-1, env-2\nenv-3"})
    expected = {"env-1", "env-2", "env-3", "file-1", "file-2"}
    assert found == expected, f"expected {sorted(expected)}, found {sorted(found)}"


def test_enabled_without_keys_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no key was found in \$KEYS"):
        load_keys(AuthOptions(enabled=True, keys_env="KEYS"), {})
    assert load_keys(AuthOptions(), {}) == frozenset(), "expected auth off to need no key"


def test_a_missing_keys_file_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="keys_file .*missing.* does not exist"):
        load_keys(AuthOptions(enabled=True, keys_file=str(tmp_path / "missing")), {"OMNIAVATAR_API_KEYS": "k"})


def test_public_health_has_no_paths() -> None:
    body = {
        "status": "unhealthy",
        "backend": "omniavatar",
        "files": {"base": "/models/Wan2.1-T2V-14B"},
        "config": "configs/omniavatar-14b.yaml",
        "error": "FileNotFoundError: /models/OmniAvatar-14B/pytorch_model.pt is missing (see ~/logs/x.log)",
        "load_progress": "reading shard 2 of 6 from ./pretrained_models/x.safetensors",
        "defaults": {"negative_prompt": "blurry, audio/mpeg-like artefacts", "num_steps": 50},
        "codecs": "avc1.64001e,mp4a.40.2",
        "url": "http://127.0.0.1:8080/health",
    }
    found = public_health(body)
    expected = {
        "status": "unhealthy",
        "backend": "omniavatar",
        "error": "FileNotFoundError: <path> is missing (see <path>)",
        "load_progress": "reading shard 2 of 6 from <path>",
        "defaults": {"negative_prompt": "blurry, audio/mpeg-like artefacts", "num_steps": 50},
        "codecs": "avc1.64001e,mp4a.40.2",
        "url": "http://127.0.0.1:8080/health",
    }
    assert found == expected, f"expected {expected}, found {found}"
