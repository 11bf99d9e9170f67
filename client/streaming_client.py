"""avatar-stream: stream a talking-avatar video, saving each segment the moment it arrives.

Example: avatar-stream --prompt "a man talking" --image face.jpg --audio speech.mp3 --concatenate

A dropped connection is resumed after the last event received; `--detach` submits a job and prints its id,
`--resume ID` follows an earlier request from its start; Ctrl-C cancels the request on the server.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python client/streaming_client.py`: import the package, not client/client.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import av
from tqdm import tqdm

from client.concat import concatenate
from client.errors import EXIT_USAGE, ClientError, run_cli
from client.events import Cursor, Event, Progress, Queued, Segment, Started
from client.request import http_client, request_body, request_parser
from client.resume import cancel, resilient_events, resume_events, submit_job
from client.stream import Received, receive, stream_events

PROG = "avatar-stream"
DESCRIPTION = (
    "Stream a talking-avatar video from the service. Each segment is saved as DIR/segment_000.mp4, "
    "segment_001.mp4, ... as soon as it arrives; each plays on its own."
)
TIMEOUT_HELP = "longest wait for the server to send anything; it sends a keep-alive every 15 s, also while the request is queued"
VIDEO_NAME = "video.mp4"


def build_parser() -> argparse.ArgumentParser:
    parser = request_parser(PROG, DESCRIPTION, timeout_s=60.0, timeout_help=TIMEOUT_HELP, prompt_required=False)
    parser.add_argument(
        "--output-dir", type=Path, metavar="DIR", default=Path("segments"), help="where segments go (default: %(default)s)"
    )
    parser.add_argument(
        "--mode",
        choices=("sse", "chunked"),
        default="sse",
        help="sse: Server-Sent Events from /generate-stream; chunked: NDJSON lines from /generate-stream-chunked "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--concatenate", action="store_true", help=f"also join the segments losslessly (no re-encode) into DIR/{VIDEO_NAME}"
    )
    follow = parser.add_mutually_exclusive_group()
    follow.add_argument("--detach", action="store_true", help="submit the request as a job, print its id and URLs, and exit")
    follow.add_argument("--resume", metavar="ID", help="follow the earlier request ID (from --detach, or a lost stream) instead of sending one")
    parser.add_argument(
        "--retries", type=int, default=5, metavar="N", help="tries to resume a dropped stream, waiting 1, 2, 4, ... s between them (default: %(default)s)"
    )
    return parser


class ProgressBar:
    """Prints each saved segment; on a terminal also a tqdm bar over all denoising steps of all segments,
    which reads "queued" while every generator is busy.

    The server denoises segment k+1 while it encodes segment k, so progress of the next segment may come
    before the previous segment's event: the bar only moves forward.
    """

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._segments = self._steps = 1

    def __call__(self, event: Event, saved: Path | None) -> None:
        if isinstance(event, Queued):
            ahead = "" if event.ahead is None else f", {event.ahead} ahead"
            print(f"queued request {event.request_id}: waiting for a free generator{ahead}", flush=True)
            if self._bar is None:
                self._bar = tqdm(total=None, unit="step", disable=None, file=sys.stderr, bar_format="{desc}")
            self._bar.set_description(f"queued{ahead}")
        elif isinstance(event, Started):
            self._segments, self._steps = event.total_segments, event.num_steps or 1
            print(
                f"started request {event.request_id}: {event.total_segments} segments, {event.num_frames} frames "
                f"({event.duration_s:.2f} s) at {event.width}x{event.height}, backend {event.backend}",
                flush=True,
            )
            if self._bar is not None:  # the "queued" line
                self._bar.close()
            # disable=None: a bar on a terminal only, so that logs and pipes get the plain lines
            self._bar = tqdm(total=self._segments * self._steps, unit="step", disable=None, file=sys.stderr)
            self._bar.set_description(f"segment 1/{self._segments} step 0/{self._steps}")
            self._bar.set_postfix_str(f"0/{self._segments} saved")
        elif self._bar is None:
            return
        elif isinstance(event, Progress):
            self._advance_to(event.segment_index * self._steps + event.step)
            self._bar.set_description(f"segment {event.segment_index + 1}/{self._segments} step {event.step}/{self._steps}")
        elif isinstance(event, Segment):
            self._advance_to((event.index + 1) * self._steps)
            self._bar.set_postfix_str(f"{event.index + 1}/{self._segments} saved")
            tqdm.write(f"saved {saved} ({event.num_frames} frames from frame {event.start_frame})", file=sys.stdout)
            sys.stdout.flush()  # a line per segment as it lands, also into a pipe or a log

    def _advance_to(self, steps_done: int) -> None:
        if steps_done > self._bar.n:
            self._bar.update(steps_done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def main_with(args: argparse.Namespace) -> int:
    """Run one streamed generation for parsed `args`; the exit status."""
    if args.resume is None and args.prompt is None:
        raise ClientError("--prompt is required (or --resume ID to follow an earlier request)", EXIT_USAGE)
    body = request_body(args) if args.resume is None else {}
    if args.detach:
        with http_client(args.timeout, args.api_key) as client:
            job = submit_job(client, args.server, body)
        print(f"submitted request {job['request_id']}: status {job['status_url']}, video {job['video_url']}", file=sys.stderr)
        print(job["request_id"])  # alone on stdout, for scripts
        return 0
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ClientError(f"cannot create the output folder {args.output_dir}: {error.strerror}", EXIT_USAGE) from None
    progress = ProgressBar()
    cursor = Cursor(request_id=args.resume)
    with http_client(args.timeout, args.api_key) as client:
        if args.resume is None:
            first = lambda c: stream_events(client, args.server, body, args.mode, c)  # noqa: E731
        else:
            first = lambda c: resume_events(client, args.server, args.mode, c)  # noqa: E731
        try:
            with contextlib.closing(resilient_events(first, client, args.server, args.mode, cursor, args.retries)) as events:
                received = receive(events, args.output_dir, progress)
        except KeyboardInterrupt:
            if cursor.request_id is not None and cancel(client, args.server, cursor.request_id):
                print(f"cancelled request {cursor.request_id}", file=sys.stderr)
            raise
        finally:
            progress.close()
    if args.concatenate:
        video = args.output_dir / VIDEO_NAME
        try:
            concatenate(received.files, video)
        except av.FFmpegError as error:  # a segment the demuxer cannot read
            raise ClientError(f"cannot join the segments into {video}: {error}") from None
        print(f"joined {len(received.files)} segments into {video}")
    print_summary(received)
    return 0


def print_summary(received: Received) -> None:
    done, started = received.completed, received.started
    print(
        f"done: {done.total_segments} segments, {done.num_frames} frames, {done.duration_s:.2f} s of video "
        f"(seed {started.seed}); first segment after {received.first_segment_s:.2f} s, total {received.total_s:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(main_with, args, PROG)


if __name__ == "__main__":
    sys.exit(main())
