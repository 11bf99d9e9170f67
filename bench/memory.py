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


def main() -> None:
    with running_service(dashboard=True) as urls:  # the state API that lists the processes needs the dashboard
        url = urls["avatar"]
        timed_stream(url, speech_request(5.0))  # warm-up: imports, detector, codecs
        pids = serve_processes()
        results = {}
        for seconds in (10.0, 60.0):
            body = speech_request(seconds)
            reset_peaks(pids)
            stream = timed_stream(url, body)
            results[seconds] = ({role: peak_mib(pid) for role, pid in pids.items()}, len(stream.segment_arrivals))
    print("peak RSS (MiB) of each Serve process during one streamed request")
    print(f"{'process':<16} {'10 s audio':>11} {'60 s audio':>11} {'ratio':>6}")
    for role in sorted(pids):
        short, long = results[10.0][0][role], results[60.0][0][role]
        print(f"{role:<16} {short:>11.0f} {long:>11.0f} {long / short:>6.2f}")
    total_short, total_long = (sum(results[s][0].values()) for s in (10.0, 60.0))
    print(f"{'all':<16} {total_short:>11.0f} {total_long:>11.0f} {total_long / total_short:>6.2f}")
    print(f"segments: {results[10.0][1]} vs {results[60.0][1]} (video length ratio {60 / 10:.0f}x)")


if __name__ == "__main__":
    main()
