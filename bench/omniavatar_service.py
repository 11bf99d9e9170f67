"""The real OmniAvatar backend behind the service (tiny random weights, CPU), in one run:

- time to first segment vs total for 3 and 6 segments (streaming);
- the compute thread's idle share: time it waited for the encoder, over its segment compute time;
- peak RSS of the Serve processes for 10 s vs 60 s of audio.

`python -m bench.omniavatar_service`; with `--model-dir D --config configs/omniavatar-14b.yaml` on a GPU
machine the same numbers for a real model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.memory import peaks_per_request, print_peaks
from bench.service import request_record, running_service, speech_request, timed_stream
from deployments.app import AppArgs
from model.omniavatar.tiny import write_tiny

# the tiny config's 32x48 bucket has 13-frame segments, 8 new frames each after the first
SEGMENT_CASES = {3: 0.7, 6: 1.6}


def app_args(model_dir: Path, config: str) -> AppArgs:
    generator = {"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 4, "ray_actor_options": {"num_cpus": 1}}
    return AppArgs(backend="omniavatar", config=config, model_dir=str(model_dir), generator=generator)


def time_to_first_segment(url: str) -> None:
    print("time to first segment / total (streaming)")
    print(f"{'segments':>8} {'audio s':>8} {'TTFS s':>7} {'total s':>8} {'fraction':>8}")
    for segments, seconds in SEGMENT_CASES.items():
        stream = timed_stream(url, speech_request(seconds))
        assert len(stream.segment_arrivals) == segments, f"expected {segments} segments, got {len(stream.segment_arrivals)}"
        print(f"{segments:>8} {seconds:>8.1f} {stream.time_to_first_segment:>7.2f} {stream.total:>8.2f} {stream.time_to_first_segment / stream.total:>8.2f}")


def idle_share(url: str) -> None:
    stream = timed_stream(url, speech_request(10.0))
    record = request_record("avatar", stream.request_id)
    compute = float(np.sum(record["segment_compute_s"]))
    print(
        f"compute thread idle (waiting on the encoder): {record['compute_idle_s']:.3f} s over {compute:.2f} s of compute "
        f"for {record['segments']} segments = {record['compute_idle_s'] / compute:.1%} (target < 5 %)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="the three model folders (default: a tiny model in a temp dir)")
    parser.add_argument("--config", default="configs/omniavatar-tiny.yaml")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or write_tiny(Path(tmp)).root
        with running_service({"avatar": app_args(model_dir, args.config)}, dashboard=True) as urls:
            timed_stream(urls["avatar"], speech_request(1.0))  # warm-up
            time_to_first_segment(urls["avatar"])
            idle_share(urls["avatar"])
            print_peaks(peaks_per_request(urls["avatar"], (10.0, 60.0)))


if __name__ == "__main__":
    main()
