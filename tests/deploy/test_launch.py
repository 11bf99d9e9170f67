"""`make serve`'s launcher: a taken port is one line before Ray starts; the config it runs names this checkout."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import yaml

from deploy.launch import PROJECT_ROOT, local_config


def test_a_taken_port_is_one_clear_line_and_fast() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "deploy.launch", "--port", str(port)], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, f"expected exit 1, found {result.returncode}: {result.stderr}"
    assert lines == [f"port {port} on 127.0.0.1 is already in use: stop what listens there or choose another, e.g. make serve PORT={port + 101}"], (
        f"expected one line naming the port, found {lines}"
    )
    assert elapsed < 30, f"expected the refusal before Ray starts (seconds), found {elapsed:.1f} s"
    assert "Ray" not in result.stdout + result.stderr, f"expected Ray not started, found {result.stdout}"


def test_the_config_run_names_this_checkout_and_the_shells_model_folder() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve-omniavatar-14b.yaml").read_text())
    local = local_config(config, 8181, PROJECT_ROOT, {"OMNIAVATAR_MODEL_DIR": "/data/omniavatar"})
    runtime_env = local["applications"][0]["runtime_env"]
    assert local["http_options"]["port"] == 8181, f"expected port 8181, found {local['http_options']}"
    assert runtime_env["working_dir"] == f"local://{PROJECT_ROOT}", f"expected this checkout as working_dir, found {runtime_env}"
    assert runtime_env["env_vars"]["OMNIAVATAR_MODEL_DIR"] == "/data/omniavatar", f"expected the shell's model folder, found {runtime_env}"
    kept = local_config(config, None, PROJECT_ROOT, {})
    assert kept["http_options"]["port"] == config["http_options"]["port"], "expected the config's port when none is given"
    assert kept["applications"][0]["runtime_env"]["env_vars"]["OMNIAVATAR_MODEL_DIR"] == "/models", "expected the config's model folder"
    assert config["applications"][0]["runtime_env"]["working_dir"] == "local:///app", "expected the file itself left as it was"
