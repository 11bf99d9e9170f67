"""The profiles of a serve config as the application builder reads them: names, deployments, and the commented
fast profile of the 14B config (which must stay valid for whoever uncomments it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.app import AppArgs
from deployments.profiles import generator_name
from model.config import PROJECT_ROOT, load_model_config
from model.request import DEFAULT_PROFILE

COMMENTED_BLOCK = re.compile(r"^(\s*)# Profiles: uncomment.*\n((?:\1# .*\n)+)", re.MULTILINE)


def uncommented(text: str) -> str:
    """`text` with the lines under each `# Profiles: uncomment ...` line uncommented."""

    def strip(block: re.Match) -> str:
        indent = block.group(1)
        return "".join(indent + line.removeprefix(indent + "# ") + "\n" for line in block.group(2).splitlines())

    return COMMENTED_BLOCK.sub(strip, text)


def test_a_config_without_profiles_is_one_default_profile() -> None:
    args = AppArgs.from_serve_config()
    assert (args.default_profile, args.profiles) == (DEFAULT_PROFILE, {}), (args.default_profile, args.profiles)


def test_each_profile_gets_its_generator_deployments_options() -> None:
    args = AppArgs.from_serve_config(PROJECT_ROOT / "configs/serve-omniavatar-tiny-profiles.yaml")
    assert (args.default_profile, list(args.profiles)) == ("quality", ["fast"]), (args.default_profile, list(args.profiles))
    assert args.profiles["fast"].generator["autoscaling_config"]["max_replicas"] == 2, args.profiles["fast"].generator
    assert args.generator["num_replicas"] == 1, f"the default profile keeps AvatarGenerator's options, got {args.generator}"
    assert load_model_config(args.profiles["fast"].config).generation.guidance_scale == 1.0


@pytest.mark.parametrize(
    ("default_profile", "profiles", "says"),
    [
        ("default", {"Fast Lane": {"config": "configs/preview.yaml"}}, "should match pattern"),
        ("fast", {"fast": {"config": "configs/preview.yaml"}}, "profiles.fast is the default profile"),
        ("default", {"fast": {}}, "config"),
    ],
)
def test_bad_profiles_are_refused_at_build(default_profile: str, profiles: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        AppArgs(default_profile=default_profile, profiles=profiles)


def test_the_14b_configs_commented_fast_profile_is_valid(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "configs/serve-omniavatar-14b.yaml").read_text()
    assert len(COMMENTED_BLOCK.findall(text)) == 2, "the profile block in args and its deployment, commented"
    (tmp_path / "serve.yaml").write_text(uncommented(text))
    args = AppArgs.from_serve_config(tmp_path / "serve.yaml")
    assert (args.default_profile, list(args.profiles)) == ("quality", ["fast"]), (args.default_profile, list(args.profiles))
    fast = args.profiles["fast"]
    assert fast.generator["ray_actor_options"]["num_gpus"] == 1, f"{generator_name('fast')} needs its options: {fast.generator}"
    assert load_model_config(fast.config).generation.timesteps == (1000, 750, 500, 250)
