"""Custom Serve metrics (exported as ray_avatar_*; tagged with deployment, replica and application)."""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]


class IngressMetrics:
    """What a client sees: time in the queue, time to first segment, segments sent, requests by outcome, rejections."""

    def __init__(self) -> None:
        self.queue_wait = Histogram(
            "avatar_queue_wait_seconds",
            description="From request arrival to a generator taking it",
            boundaries=SECONDS,
        )
        self.time_to_first_segment = Histogram(
            "avatar_time_to_first_segment_seconds",
            description="From request arrival to the first segment handed to the client",
            boundaries=SECONDS,
            tag_keys=("route",),
        )
        self.segments_streamed = Counter(
            "avatar_segments_streamed", description="Segments sent to clients", tag_keys=("route",)
        )
        self.requests = Counter(
            "avatar_requests", description="Generate requests by route and outcome", tag_keys=("route", "outcome")
        )
        self.rejected = Counter(
            "avatar_requests_rejected", description="Requests refused before streaming, by error code", tag_keys=("code",)
        )


class GeneratorMetrics:
    """What the model does: compute and encode time per segment, cancellations."""

    def __init__(self) -> None:
        self.segment_seconds = Histogram(
            "avatar_segment_compute_seconds", description="Backend compute time per segment", boundaries=SECONDS
        )
        self.encode_seconds = Histogram(
            "avatar_segment_encode_seconds", description="MP4 encoding time per segment", boundaries=SECONDS
        )
        self.steps = Counter("avatar_denoising_steps", description="Denoising steps done (compute seconds / steps = seconds a step)")
        self.cancelled = Counter("avatar_requests_cancelled", description="Generations stopped because the client left or its ingress died")
        self.failed = Counter("avatar_generations_failed", description="Generations that raised an error")
