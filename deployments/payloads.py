"""The payloads of the stream events of docs/protocol.md, built from a job and the generator's events."""

from __future__ import annotations

from typing import Any

from deployments.events import EncodedSegment, GenerationJob


def video_fields(job: GenerationJob) -> dict[str, Any]:
    """What the start, complete and whole-video answers all say about the video."""
    plan = job.plan
    return {
        "total_segments": plan.num_segments,
        "num_frames": plan.num_frames,
        "duration_s": round(plan.duration_s, 3),
        "lead_in_s": plan.lead_in_s,
        "seed": job.request.seed,
        "profile": job.request.profile,
    }


def queued_payload(request_id: str, ahead: int) -> dict[str, Any]:
    return {
        "message": "Waiting for a free generator",
        "request_id": request_id,
        "ahead": ahead,
        "ahead_scope": "service",  # requests submitted earlier that no generator took yet, through any ingress
    }


def start_payload(job: GenerationJob, backend: dict[str, Any]) -> dict[str, Any]:
    plan = job.plan
    return {
        "message": "Video generation started",
        "request_id": job.request_id,
        **video_fields(job),
        "fps": plan.fps,
        "width": plan.width,
        "height": plan.height,
        "num_steps": job.request.num_steps,
        "backend": backend.get("backend"),
    }


def segment_payload(segment: EncodedSegment, fps: int) -> dict[str, Any]:
    """Everything but the MP4 itself, which the ingress adds as `segment_base64`."""
    return {
        "segment_index": segment.index,
        "total_segments": segment.total,
        "is_final": segment.is_final,
        "start_frame": segment.start_frame,
        "num_frames": segment.num_frames,
        "fps": fps,
        "mime_type": "video/mp4",
        "codecs": segment.codecs,
    }
