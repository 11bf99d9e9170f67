"""Time to the first video a client can play, as a fraction of the whole request: streaming (SSE) vs
/generate, for a 3-segment and a 12-segment request, in one run on the service of serve_config.yaml."""

from __future__ import annotations

from bench.service import running_service, speech_request, timed_stream, timed_whole_video

# 400x720 (the example face) has 105-frame segments, 92 new frames each after the first: 10 s -> 3, 44 s -> 12
CASES = {3: 10.0, 12: 44.0}


def main() -> None:
    print("time to first segment / total time (lower is better; /generate is always 1.0)")
    print(f"{'segments':>8} {'audio s':>8} {'stream TTFS s':>13} {'stream total s':>14} {'fraction':>8} {'/generate s':>11} {'TTFS vs /generate':>17}")
    with running_service() as urls:
        url = urls["avatar"]
        timed_stream(url, speech_request(3.0))  # warm-up
        for segments, seconds in CASES.items():
            body = speech_request(seconds)
            stream = timed_stream(url, body)
            assert len(stream.segment_arrivals) == segments, f"expected {segments} segments, got {len(stream.segment_arrivals)}"
            whole = timed_whole_video(url, body)
            print(
                f"{segments:>8} {seconds:>8.0f} {stream.time_to_first_segment:>13.2f} {stream.total:>14.2f} "
                f"{stream.time_to_first_segment / stream.total:>8.2f} {whole:>11.2f} {stream.time_to_first_segment / whole:>17.2f}"
            )


if __name__ == "__main__":
    main()
