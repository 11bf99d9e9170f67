"""`make serve`: a serve config started with `serve run`, with the port and the project folder filled in.

    python -m deploy.launch [CONFIG] [--port N]

Checks that the port is free before Ray starts (one clear line if not), points each application's
`runtime_env.working_dir` at this checkout (so the config works whatever the current directory), passes
$OMNIAVATAR_MODEL_DIR from the shell into the applications' environment when it is set, writes the
result under .cache/serve/ and hands over to `serve run`.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR_ENV = "OMNIAVATAR_MODEL_DIR"


class PortInUse(RuntimeError):
    pass


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse (one line) when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                f"port {port} on {host} is already in use: stop what listens there or choose another, e.g. make serve PORT={port + 101}"
            ) from None


def local_config(config: dict[str, Any], port: int | None, root: Path, env: dict[str, str]) -> dict[str, Any]:
    """A copy of a serve config for this machine: `port` (when given), this checkout as every application's
    working_dir, and $OMNIAVATAR_MODEL_DIR from `env` (when set) in every application's env_vars."""
    config = {**config, "http_options": {**config.get("http_options", {})}}
    if port is not None:
        config["http_options"]["port"] = port
    applications = []
    for application in config.get("applications", []):
        runtime_env = {**application.get("runtime_env", {}), "working_dir": f"local://{root}"}
        if env.get(MODEL_DIR_ENV):
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), MODEL_DIR_ENV: env[MODEL_DIR_ENV]}
        applications.append({**application, "runtime_env": runtime_env})
    config["applications"] = applications
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.launch", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="serve_config.yaml", help="a serve config (default serve_config.yaml)")
    parser.add_argument("--port", type=int, help="the HTTP port (default: the config's http_options.port)")
    args = parser.parse_args(argv)
    path = Path(args.config) if Path(args.config).is_file() else PROJECT_ROOT / args.config
    if not path.is_file():
        print(f"serve config not found: {args.config}", file=sys.stderr)
        return 2
    config = local_config(yaml.safe_load(path.read_text()), args.port, PROJECT_ROOT, dict(os.environ))
    http = config["http_options"]
    try:
        check_port_free(http.get("host", "127.0.0.1"), int(http.get("port", 8000)))
    except PortInUse as error:
        print(error, file=sys.stderr)
        return 1
    out = PROJECT_ROOT / ".cache" / "serve" / f"{path.stem}-{http.get('port', 8000)}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Written by `python -m deploy.launch {args.config}` from {path.name}; edit that file instead.\n" + yaml.safe_dump(config, sort_keys=False))
    print(f"serving {path.name} on http://{http.get('host')}:{http.get('port')} (the config as run: {out.relative_to(PROJECT_ROOT)})", flush=True)
    serve = str(Path(sys.executable).with_name("serve"))
    os.execv(serve, [serve, "run", str(out)])


if __name__ == "__main__":
    sys.exit(main())
