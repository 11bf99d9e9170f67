"""Jobs: POST /jobs answers 202 at once, the generation runs to the end with no client connected, its status
says state, progress and ETA, and GET /videos serves the whole MP4 (with Range) equal to /generate's frames."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np

from tests.integration.conftest import Service
from tests.integration.streams import decode_frames

REQUEST = {"prompt": "hi", "num_frames": 145, "height": 720, "width": 720, "num_steps": 2, "seed": 11}  # 3 segments


def wait_for_state(client: httpx.Client, status_url: str, state: str, timeout_s: float = 60) -> dict:
    deadline, status = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        status = client.get(status_url).json()
        if status.get("state") == state:
            return status
        time.sleep(0.1)
    raise AssertionError(f"expected state {state!r} within {timeout_s} s, got {status}")


def test_a_job_completes_without_a_client_and_its_video_equals_generate(paced: Service, client: httpx.Client) -> None:
    submitted = client.post(f"{paced.url}/jobs", json=REQUEST)
    assert submitted.status_code == 202, f"expected 202, got {submitted.status_code}: {submitted.text}"
    job = submitted.json()
    request_id = job["request_id"]
    assert job["status_url"] == f"/paced/jobs/{request_id}" and submitted.headers["location"] == job["status_url"], job
    assert len(request_id) >= 32, f"request ids must be unguessable, got {request_id!r}"
    done = wait_for_state(client, f"{paced.url}/jobs/{request_id}", "completed")  # the paced app cancels streams at once: not jobs
    assert (done["progress"], done["segments_done"], done["total_segments"], done["total_steps"]) == (1.0, 3, 3, 6), done
    assert done["eta_s"] is None and done["detached"] is True, done

    video = client.get(f"{paced.url}/videos/{request_id}")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4", f"expected an MP4, got {video.status_code} {video.headers}"
    assert video.headers["accept-ranges"] == "bytes", video.headers
    whole = client.post(f"{paced.url}/generate", json=REQUEST)
    expected = decode_frames(base64.b64decode(whole.json()["video_base64"]))
    np.testing.assert_array_equal(decode_frames(video.content), expected, err_msg="the job's video differs from /generate's frames")

    size = len(video.content)
    part = client.get(f"{paced.url}/videos/{request_id}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == video.content[100:200], f"expected bytes 100-199, got {part.status_code}"
    assert part.headers["content-range"] == f"bytes 100-199/{size}", part.headers
    tail = client.get(f"{paced.url}/videos/{request_id}", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == video.content[-10:], f"expected the last 10 bytes, got {tail.status_code}"
    outside = client.get(f"{paced.url}/videos/{request_id}", headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}", f"expected 416, got {outside.status_code}"


def test_a_bad_job_body_is_refused_before_it_runs(paced: Service, client: httpx.Client) -> None:
    response = client.post(f"{paced.url}/jobs", json={**REQUEST, "num_steps": 500})
    assert response.status_code == 422 and response.json()["error"]["field"] == "num_steps", f"expected 422 on num_steps, got {response.text}"


def test_the_video_of_an_unfinished_job_is_409_and_delete_cancels_it(paced: Service, client: httpx.Client) -> None:
    long = {"prompt": "hi", "num_frames": 2000, "height": 720, "width": 720, "num_steps": 4}  # minutes at the paced rate
    request_id = client.post(f"{paced.url}/jobs", json=long).json()["request_id"]
    early = client.get(f"{paced.url}/videos/{request_id}")
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_complete", f"expected 409 not_complete, got {early.text}"
    deleted = client.delete(f"{paced.url}/streams/{request_id}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "cancelled", f"expected cancelled, got {deleted.text}"
