"""The shared text encoder: the same rows as the generator's own UMT5, and a generator using it loads none."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from model.backend import CancelToken
from model.omniavatar.backend import OmniAvatarBackend
from model.omniavatar.prompts import PromptEncoder
from model.plan import plan_segments

from .test_backend import tiny_request


def test_shared_encoder_rows_and_video_equal_the_replica_s_own(tiny_config, tiny_backend):
    shared = PromptEncoder(tiny_config)
    text = "A woman talks to the camera and smiles."
    own = tiny_backend.models.text_encoder.encode([text])
    assert torch.equal(shared.encode(text), own), "expected the shared encoder's rows to equal the replica's own"
    assert shared.encode(text) is shared.encode(text), "expected the second encoding of a text from the cache"

    config = replace(tiny_config, options={**tiny_config.options, "shared_text_encoder": True})
    backend = OmniAvatarBackend(config, text_encoder=shared.encode)
    assert backend.models.text_encoder is None, "expected no UMT5 in a generator with a shared text encoder"
    assert backend.describe()["text_encoder"] == "shared", backend.describe()["text_encoder"]
    request = tiny_request(tiny_config, seconds=0.4)
    plan = plan_segments(request, tiny_config.planning)
    videos = [np.concatenate([s.frames for s in b.generate(request, plan, CancelToken(), lambda *a: None)]) for b in (backend, tiny_backend)]
    assert np.array_equal(*videos), f"expected the same video, got a difference of {np.abs(videos[0].astype(int) - videos[1]).max()}"
