"""Serving overhead per segment: what the client waits beyond the backend's compute, as a fraction.

For each segment: client-observed interval (arrival of segment k minus arrival of k - 1, or minus the send
time for k = 0) against the backend's compute time for that segment, as the generator recorded it. The
difference is encoding not hidden behind compute, Ray hops, base64 and HTTP. Measured for the preview as is
and paced like a model (0.25 s a step), in one run."""

from __future__ import annotations

import numpy as np

from bench.service import request_record, running_service, speech_request, timed_stream
from deployments.app import AppArgs


def measure(app: str, url: str, label: str) -> None:
    body = speech_request(20.0)
    timed_stream(url, body)  # warm-up
    stream = timed_stream(url, body)
    record = request_record(app, stream.request_id)
    arrivals = np.array([stream.sent, *stream.segment_arrivals])
    client = np.diff(arrivals)
    compute = np.array(record["segment_compute_s"])
    overhead = client - compute
    print(
        f"{label:<22} {len(client):>8} {compute.mean() * 1000:>11.0f} {client.mean() * 1000:>10.0f} {overhead.mean() * 1000:>12.0f} "
        f"{overhead.sum() / client.sum():>8.3f} {np.mean(record['segment_encode_s']) * 1000:>10.0f}"
    )


def main() -> None:
    print("per segment, milliseconds (means); fraction = (client time - backend compute) / client time")
    print(f"{'backend':<22} {'segments':>8} {'compute ms':>11} {'client ms':>10} {'overhead ms':>12} {'fraction':>8} {'encode ms':>10}")
    apps = {"preview": AppArgs.from_serve_config(), "paced": AppArgs.from_serve_config(options={"seconds_per_step": 0.25})}
    with running_service(apps) as urls:
        measure("preview", urls["preview"], "preview")
        measure("paced", urls["paced"], "preview, 0.25 s/step")


if __name__ == "__main__":
    main()
