"""Peak memory of the Ray processes for 10 s vs 60 s of audio: streaming keeps it flat.

Before each request the peak-RSS counters of the Serve processes are reset (`/proc/PID/clear_refs` = 5);
after it each process's VmHWM is read. Linux only."""

from __future__ import annotations

from pathlib import Path

import ray
from ray.util.state import list_actors

from bench.service import running_service, speech_request, timed_stream

ROLES = {"ServeController": "controller", "ProxyActor": "proxy"}


def serve_processes() -> dict[str, int]:
    processes = {}
    address = ray.get_runtime_context().gcs_address  # this cluster, even if others run on the machine
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True):
        name = actor.class_name
        role = ROLES.get(name) or name.split(":")[-1]  # ServeReplica:avatar:AvatarGenerator -> AvatarGenerator
        processes[role] = actor.pid
    return processes


def reset_peaks(pids: dict[str, int]) -> None:
    for pid in pids.values():
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def peaks_per_request(url: str, durations: tuple[float, ...]) -> dict[float, tuple[dict[str, float], int]]:
    """For each audio duration: the peak RSS (MiB) of each Serve process during one streamed request, and
    its number of segments."""
    timed_stream(url, speech_request(min(durations)))  # warm-up: imports, detector, codecs, caches
    pids = serve_processes()
    results = {}
    for seconds in durations:
        body = speech_request(seconds)
        reset_peaks(pids)
        stream = timed_stream(url, body)
        results[seconds] = ({role: peak_mib(pid) for role, pid in pids.items()}, len(stream.segment_arrivals))
    return results


def print_peaks(results: dict[float, tuple[dict[str, float], int]]) -> None:
    (short_s, (short, short_segments)), (long_s, (long, long_segments)) = sorted(results.items())
    print("peak RSS (MiB) of each Serve process during one streamed request")
    print(f"{'process':<16} {f'{short_s:.0f} s audio':>11} {f'{long_s:.0f} s audio':>11} {'ratio':>6}")
    for role in sorted(short):
        print(f"{role:<16} {short[role]:>11.0f} {long[role]:>11.0f} {long[role] / short[role]:>6.2f}")
    print(f"{'all':<16} {sum(short.values()):>11.0f} {sum(long.values()):>11.0f} {sum(long.values()) / sum(short.values()):>6.2f}")
    print(f"segments: {short_segments} vs {long_segments} (video length ratio {long_s / short_s:.0f}x)")


def main() -> None:
    with running_service(dashboard=True) as urls:  # the state API that lists the processes needs the dashboard
        print_peaks(peaks_per_request(urls["avatar"], (10.0, 60.0)))


if __name__ == "__main__":
    main()
