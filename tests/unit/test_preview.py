"""The preview backend: deterministic for a seed, the mouth follows the loudness, progress and cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from model.backend import CancelToken, backend_class
from model.config import load_model_config
from model.errors import GenerationCancelled
from model.media.image import fit_to_bucket
from model.plan import plan_segments
from model.preview.animation import loudness_envelope
from model.preview.face import find_face
from model.request import RequestLimits, parse_request
from tests.helpers import EXAMPLE_IMAGE, EXAMPLE_SPEECH, b64, body

CONFIG = load_model_config("configs/preview.yaml")


def run(request, plan, cancel=None, on_step=None):
    backend = backend_class(CONFIG.backend)(CONFIG)
    steps = []
    frames = [s.frames for s in backend.generate(request, plan, cancel or CancelToken(), on_step or (lambda *a: steps.append(a)))]
    return frames, steps


@pytest.fixture(scope="module")
def example():
    raw = body(image_base64=b64(EXAMPLE_IMAGE.read_bytes()), audio_base64=b64(EXAMPLE_SPEECH.read_bytes()), seed=3, num_steps=3)
    request = parse_request(raw, RequestLimits(), CONFIG.generation)
    plan = plan_segments(request, CONFIG.planning)
    return request, plan, *run(request, plan)


def test_follows_the_plan_and_reports_each_step(example) -> None:
    request, plan, frames, steps = example
    assert [len(f) for f in frames] == [s.num_frames for s in plan.segments]
    assert all(f.shape[1:] == (plan.height, plan.width, 3) and f.dtype == np.uint8 for f in frames)
    expected = [(s.index, k, 3) for s in plan.segments for k in (1, 2, 3)]
    assert steps == expected, f"progress {steps} != {expected}"


def test_frame_zero_is_the_reference(example) -> None:
    request, plan, frames, _ = example
    reference = (fit_to_bucket(request.image, plan.height, plan.width) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(frames[0][0], reference)


def test_deterministic_for_a_seed(example) -> None:
    request, plan, frames, _ = example
    again, _ = run(request, plan)
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a, b)
    other, _ = run(type(request)(**{**request.__dict__, "seed": 4}), plan)
    assert any(not np.array_equal(a, b) for a, b in zip(frames, other)), "another seed should move the head differently"


def test_mouth_moves_with_loudness(example) -> None:
    """The change in the mouth region tracks the speech envelope; the rest of the picture stays still."""
    request, plan, frames, _ = example
    video = np.concatenate(frames).astype(np.float32)
    face = find_face(video[0].astype(np.uint8))
    mx, my = face.mouth
    half = int(face.size * 0.2)
    mouth = video[:, int(my) - half // 2 : int(my) + half, int(mx) - half : int(mx) + half]
    change = np.abs(mouth - mouth[0]).mean(axis=(1, 2, 3))
    envelope = loudness_envelope(np.pad(request.audio.samples, (4800, 0)), plan.num_frames, 16000, 25)
    correlation = np.corrcoef(change[1:], envelope[1:])[0, 1]
    assert correlation > 0.6, f"mouth change should follow loudness; correlation {correlation:.2f}"
    assert np.abs(video[:, -40:, -40:] - video[0, -40:, -40:]).max() < 1, "the far corner is not animated"


def test_without_image_a_placeholder_is_animated() -> None:
    request = parse_request(body(num_frames=40, height=256, width=256, seed=1, num_steps=2), RequestLimits(), CONFIG.generation)
    plan = plan_segments(request, CONFIG.planning)
    frames, _ = run(request, plan)
    video = np.concatenate(frames)
    assert video.shape == (40, 256, 256, 3) and video.std() > 10, "a drawn portrait, not a blank frame"


def test_cancel_stops_within_one_step() -> None:
    request = parse_request(body(num_frames=400, height=256, width=256, num_steps=20), RequestLimits(), CONFIG.generation)
    plan = plan_segments(request, CONFIG.planning)
    cancel = CancelToken()
    steps_after_cancel = []

    def on_step(segment: int, step: int, num_steps: int) -> None:
        if cancel.cancelled:
            steps_after_cancel.append((segment, step))
        elif (segment, step) == (0, 5):
            threading.Thread(target=cancel.cancel).start()  # from another thread, as the deployment does

    with pytest.raises(GenerationCancelled):
        run(request, plan, cancel, on_step)
    assert len(steps_after_cancel) <= 1, f"work went on after cancel: {steps_after_cancel}"
