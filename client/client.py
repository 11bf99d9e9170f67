"""avatar-generate: the whole talking-avatar video in one request (POST /generate), saved as one MP4.

Example: avatar-generate --prompt "a man talking" --image face.jpg --audio speech.mp3 --output video.mp4
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python client/client.py`: import the package, not this file as `client`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from client.errors import EXIT_USAGE, ClientError, raise_for_error_response, run_cli
from client.events import ProtocolError
from client.files import write_atomically
from client.request import endpoint, http_client, new_request_id, request_body, request_parser

PROG = "avatar-generate"
DESCRIPTION = (
    "Generate a talking-avatar video and save it as one MP4 once the whole video is done. "
    "To see segments while they are computed, use avatar-stream."
)
TIMEOUT_HELP = "longest wait for the whole video; the server answers only when it is done"


def build_parser() -> argparse.ArgumentParser:
    parser = request_parser(PROG, DESCRIPTION, timeout_s=1800.0, timeout_help=TIMEOUT_HELP)
    parser.add_argument(
        "--output", type=Path, metavar="FILE", default=Path("video.mp4"), help="the MP4 to write (default: %(default)s)"
    )
    return parser


def main_with(args: argparse.Namespace) -> int:
    """Run one whole-video generation for parsed `args`; the exit status."""
    body = request_body(args)
    if not args.output.parent.is_dir():
        raise ClientError(f"the output folder does not exist: {args.output.parent}", EXIT_USAGE)
    sent = time.monotonic()
    with http_client(args.timeout, args.api_key) as client:
        response = client.post(endpoint(args.server, "/generate"), json=body, headers={"X-Request-ID": new_request_id()})
    raise_for_error_response(response)
    try:
        result = response.json()
        video = base64.b64decode(result["video_base64"], validate=True)
    except (ValueError, KeyError, TypeError) as error:  # not JSON, no video_base64, or not base64
        raise ProtocolError(f"the /generate answer has no valid video_base64 ({type(error).__name__}: {error})") from None
    write_atomically(args.output, video)
    print(f"saved {args.output} ({len(video) / 1e6:.1f} MB)")
    print(
        f"done: {result.get('total_segments')} segments, {result.get('num_frames')} frames, "
        f"{result.get('duration_s')} s of video (seed {result.get('seed')}); total {time.monotonic() - sent:.2f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(main_with, args, PROG)


if __name__ == "__main__":
    sys.exit(main())
