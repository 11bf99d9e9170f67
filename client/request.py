"""The request both clients send: its command-line options, and the JSON body built from them."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from pathlib import Path
from typing import Any

import httpx

from client.errors import EXIT_USAGE, ClientError

DEFAULT_SERVER = "http://127.0.0.1:8080"
API_KEY_ENV = "OMNIAVATAR_API_KEY"


def request_parser(
    prog: str, description: str, timeout_s: float, timeout_help: str, prompt_required: bool = True
) -> argparse.ArgumentParser:
    """A parser with the options both clients share: where to send, what to generate, how long to wait."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="URL", help="base URL of the service (default: %(default)s)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        metavar="KEY",
        help=f"the service's API key, sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else none)",
    )
    parser.add_argument(
        "--prompt", required=prompt_required, metavar="TEXT", help="what the video shows, e.g. 'a man talking on a sofa'"
    )
    parser.add_argument("--image", type=Path, metavar="FILE", help="reference face: a JPEG, PNG or WebP file")
    parser.add_argument(
        "--audio", type=Path, metavar="FILE", help="speech: a WAV, MP3, FLAC or OGG file; it sets the video length"
    )
    parser.add_argument("--steps", type=int, metavar="N", help="denoising steps per segment (default: the server's)")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="random seed; the same seed and inputs give the same video (default: random)"
    )
    parser.add_argument("--negative-prompt", metavar="TEXT", help="what the video should avoid (default: the server's)")
    parser.add_argument("--guidance-scale", type=float, metavar="SCALE", help="text guidance, 1 to 20 (default: the server's)")
    parser.add_argument("--profile", metavar="NAME", help="the server's profile to use, e.g. fast (default: the server's default)")
    parser.add_argument(
        "--tea-cache-threshold", type=float, metavar="X", help="TeaCache threshold: faster, lower quality; 0 = off (default: the server's)"
    )
    parser.add_argument(
        "--timeout", type=float, default=timeout_s, metavar="SECONDS", help=f"{timeout_help} (default: %(default)s)"
    )
    return parser


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of docs/protocol.md from parsed options; options left out are left to the server."""
    body: dict[str, Any] = {"prompt": args.prompt}
    for field, path in (("image_base64", args.image), ("audio_base64", args.audio)):
        if path is not None:
            body[field] = base64.b64encode(read_input(path)).decode()
    optional = {
        "num_steps": args.steps,
        "seed": args.seed,
        "negative_prompt": args.negative_prompt,
        "guidance_scale": args.guidance_scale,
        "profile": args.profile,
        "tea_cache_threshold": args.tea_cache_threshold,
    }
    return body | {field: value for field, value in optional.items() if value is not None}


def read_input(path: Path) -> bytes:
    """The bytes of an input file, or a usage error that names it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ClientError(f"input file not found: {path}", EXIT_USAGE) from None
    except OSError as error:
        raise ClientError(f"cannot read input file {path}: {error.strerror or error}", EXIT_USAGE) from None


def http_client(timeout_s: float, api_key: str | None = None) -> httpx.Client:
    """An HTTP client that waits at most `timeout_s` for any read (a stream's keep-alives reset it) and sends
    the API key, if any, with every request."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)), headers=headers)


def new_request_id() -> str:
    """An unguessable X-Request-ID (128 random bits): the request's id for resuming, fetching and cancelling."""
    return secrets.token_urlsafe(16)


def endpoint(server: str, path: str) -> str:
    return f"{server.rstrip('/')}{path}"
