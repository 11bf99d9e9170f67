"""Memory of the service holding finished jobs: 20 detached jobs of 60 s speech each, run to the end with no
client connected, then retained for resumes and downloads (submitted as the generators' queue has room:
a full queue answers 503 with Retry-After, for jobs as for streams). Prints the StreamStore's accounting of what it
retains against its configured limit (`args.stream.max_retained_bytes`) and the resident memory of the
StreamStore and ingress replicas (their own pages, and the pages of Ray's object store they have mapped),
before, after the jobs, after every video was fetched once, and after a garbage collection and malloc_trim.

    .venv/bin/python -m bench.retained_jobs [--jobs 20] [--seconds 60] [--size 256]

The preview backend at SIZE x SIZE pixels and one denoising step a segment keeps the run to minutes on a
CPU; the retained bytes are those of the encoded MP4 segments (and of each video once it was fetched).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import time
from pathlib import Path

import httpx
import ray

from bench.service import running_service, speech_request
from deployments.app import AppArgs

MIB = 1 << 20


def _replica(deployment: str) -> ray.actor.ActorHandle:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    return ray.get_actor(names[0], namespace="serve")


def _trim(_: object) -> None:
    """Collect garbage and hand freed heap back to the system: what remains is memory still referenced."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def trimmed(deployment: str) -> None:
    ray.get(_replica(deployment).__ray_call__.remote(_trim))


def rss_mib(deployment: str) -> dict[str, float]:
    """Resident memory of the one replica of `deployment`, from /proc: its own (anonymous) pages and the
    pages of Ray's shared object store it has mapped (call arguments and results pass through there)."""
    pid = ray.get(_replica(deployment).__ray_call__.remote(lambda _: os.getpid()))
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"own": int(fields["RssAnon"].split()[0]) / 1024, "shared": int(fields["RssShmem"].split()[0]) / 1024}


def _row(name: str, label: str, now: dict[str, float], before: dict[str, float]) -> str:
    return (
        f"{name} {label:<22} own {now['own']:7.1f} MiB (+{now['own'] - before['own']:6.1f}), "
        f"object-store pages {now['shared']:7.1f} MiB (+{now['shared'] - before['shared']:6.1f})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.retained_jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="speech per job")
    parser.add_argument("--size", type=int, default=256, help="frame width and height")
    args = parser.parse_args(argv)
    service_args = AppArgs.from_serve_config()
    limit = service_args.stream.max_retained_bytes
    with running_service({"avatar": service_args}) as urls, httpx.Client(timeout=600) as http:
        url = urls["avatar"]
        memory = ray.serve.get_deployment_handle("StreamStore", app_name="avatar").memory
        before = {name: rss_mib(name) for name in ("StreamStore", "AvatarIngress")}
        started = time.monotonic()
        ids = []
        for seed in range(args.jobs):
            body = speech_request(args.seconds, seed=seed, image=False) | {"height": args.size, "width": args.size, "num_steps": 1}
            while (answer := http.post(f"{url}/jobs", json=body)).status_code == 503:  # the generators' queue is full
                time.sleep(float(answer.headers.get("retry-after", "1")))
            assert answer.status_code == 202, f"expected 202, got {answer.status_code}: {answer.text[:300]}"
            ids.append(answer.json()["request_id"])
        for request_id in ids:
            while (state := http.get(f"{url}/jobs/{request_id}").json()["state"]) not in ("completed", "failed", "cancelled"):
                time.sleep(1.0)
            assert state == "completed", f"job {request_id} ended {state}"
        took = time.monotonic() - started
        finished = {name: rss_mib(name) for name in before}
        held = memory.remote().result()
        video_bytes = sum(len(http.get(f"{url}/videos/{request_id}").content) for request_id in ids)
        fetched = {name: rss_mib(name) for name in before}
        held_after = memory.remote().result()
        for name in before:
            trimmed(name)
        trim = {name: rss_mib(name) for name in before}
    print(f"{args.jobs} jobs of {args.seconds:g} s speech at {args.size}x{args.size}, all completed in {took:.0f} s with no client connected")
    print(f"retained after the jobs:         {held['retained_bytes'] / MIB:8.1f} MiB = {held['retained_bytes'] / limit:.3f} x max_retained_bytes ({limit / MIB:.0f} MiB), {held['runs']} requests kept")
    print(f"retained after fetching videos:  {held_after['retained_bytes'] / MIB:8.1f} MiB = {held_after['retained_bytes'] / limit:.3f} x the limit (videos {video_bytes / MIB:.1f} MiB)")
    for name in before:
        print(_row(name, "before:", before[name], before[name]))
        print(_row(name, "after the jobs:", finished[name], before[name]))
        print(_row(name, "after the videos:", fetched[name], before[name]))
        print(_row(name, "after gc, malloc_trim:", trim[name], before[name]))


if __name__ == "__main__":
    main()
