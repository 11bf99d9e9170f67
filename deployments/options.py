"""How the service treats clients and generators over time (serve_config.yaml `args.stream`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamOptions:
    """Timeouts and intervals of the ingress and the generator; every one is in seconds."""

    keepalive_s: float = 15.0  # SSE comment / empty NDJSON line while nothing else is sent
    retry_after_s: int = 5  # Retry-After of a 503
    health_timeout_s: float = 2.0  # /health answers within this, whatever the generators do
    body_timeout_s: float = 30.0  # a request body not received in full within this -> 408
    drain_bytes: int = 256 * 1024 * 1024  # an oversized body up to this is read (and dropped) before the 413
    queued_after_s: float = 0.5   # a request no generator took within this gets a `queued` event
    max_queue_wait_s: float = 600.0  # a request no generator took within this ends with `queue_timeout`
    stall_timeout_s: float = 300.0  # a generation with no step progress for this long has stalled
    orphan_check_s: float = 2.0  # how often a generator checks that the ingress of its request is alive
    resume_grace_s: float = 0.0  # a stream whose last client left runs on this long for a resume; 0: cancel at once
    retention_s: float = 3600.0  # a finished request's segments and video are kept this long for resumes and downloads
    max_retained_bytes: int = 1 << 30  # and within this many bytes over all finished requests, oldest evicted first
