"""The replay log and the retention of finished requests."""

from __future__ import annotations

import asyncio

from deployments.errors import ServiceError
from deployments.runs import Run, RunRegistry


def run(request_id: str, owner: str | None = None) -> Run:
    return Run(request_id, owner, detached=False, total_segments=2, total_steps=4)


def test_a_late_reader_gets_the_segments_and_only_the_latest_progress() -> None:
    async def scenario() -> list[tuple[int, str]]:
        log = run("a")
        log.append("start", {})
        for step in range(3):
            log.append("progress", {"step": step})
        log.append("segment", {}, mp4=b"x" * 10)
        log.append("progress", {"step": 0})
        return [(event.seq, event.kind) for event in log.after(-1)]

    assert asyncio.run(scenario()) == [(0, "start"), (3, "progress"), (4, "segment"), (5, "progress")]


def test_finished_runs_are_evicted_oldest_first_over_the_byte_limit() -> None:
    async def scenario() -> tuple[list[str], object, object]:
        registry = RunRegistry(retention_s=3600, max_retained_bytes=25)
        for name in ("old", "mid", "new"):
            item = run(name)
            item.append("segment", {}, mp4=b"x" * 10)
            item.finish("completed")
            registry.add(item)
        live = run("live")
        live.append("segment", {}, mp4=b"x" * 100)
        registry.add(live)
        return registry.evict(), registry.get("old", None), registry.get("live", None)

    evicted, old, live = asyncio.run(scenario())
    assert evicted == ["old"], f"expected only the oldest evicted (live runs never), got {evicted}"
    assert isinstance(old, ServiceError) and old.code == "request_evicted", f"expected request_evicted, got {old}"
    assert isinstance(live, Run), f"a live run stays, got {live}"


def test_another_owner_sees_an_unknown_request() -> None:
    async def scenario() -> object:
        registry = RunRegistry(retention_s=3600, max_retained_bytes=1 << 20)
        registry.add(run("a", owner="key-1-digest"))
        return registry.get("a", "key-2-digest")

    found = asyncio.run(scenario())
    assert isinstance(found, ServiceError) and (found.status, found.code) == (404, "unknown_request"), f"expected 404 unknown_request, got {found}"
