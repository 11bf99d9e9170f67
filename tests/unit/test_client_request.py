"""The clients' shared options become the JSON body of docs/protocol.md: given options only, files as base64."""

from __future__ import annotations

import base64
from pathlib import Path

from client.request import request_body, request_parser

FACE = Path(__file__).resolve().parents[1] / "data" / "man_on_sofa.jpeg"


def parse(*argv: str):
    return request_parser("avatar-test", "test", 60.0, "seconds").parse_args(list(argv))


def test_options_left_out_are_left_to_the_server() -> None:
    body = request_body(parse("--prompt", "hi"))
    assert body == {"prompt": "hi"}, f"expected only the prompt, got {body}"


def test_every_generation_option_reaches_the_body() -> None:
    args = parse(
        "--prompt", "hi", "--image", str(FACE), "--steps", "4", "--seed", "7", "--negative-prompt", "blur",
        "--guidance-scale", "3.5", "--profile", "fast", "--tea-cache-threshold", "0.14",
    )  # fmt: skip
    body = request_body(args)
    expected = {
        "prompt": "hi",
        "image_base64": base64.b64encode(FACE.read_bytes()).decode(),
        "num_steps": 4,
        "seed": 7,
        "negative_prompt": "blur",
        "guidance_scale": 3.5,
        "profile": "fast",
        "tea_cache_threshold": 0.14,
    }
    assert body == expected, f"expected {sorted(expected)}, got {sorted(body)}"
