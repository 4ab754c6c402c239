"""The service end to end on loopback: submit, stream, content (Range), list, cancel, metrics; validation (422
naming the field), auth (401), queue full (429), kill -9 + restart finishing the job, fuzzed bodies never 500."""

import io
import json
import time
import urllib.request

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miga_fast.client import ServiceError

from .conftest import PROMPT, Server


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def raw(url, path, method="GET", body=None, headers=None):
    """(status, headers, body bytes) without raising on 4xx / 5xx."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_submit_stream_content_list(server):
    client = server.client()
    job = client.create(prompt=PROMPT, frames=24, seed=3)
    assert job["status"] in ("queued", "running") and job["id"].startswith("video_") and len(job["id"]) == 38
    frames = list(client.frames(job["id"]))
    assert [i for i, _ in frames] == list(range(24)) and frames[0][1].shape == (8, 8, 3)
    done = client.wait(job["id"])
    assert done["status"] == "completed" and done["progress"] == 100.0 and done["frames_done"] == 24
    mp4 = client.content(job["id"])
    video = iio.imread(io.BytesIO(mp4), extension=".mp4")
    assert video.shape[0] == 24
    status, headers, part = raw(server.url, f"/v1/videos/{job['id']}/content", headers={"Range": "bytes=0-99"})
    assert status == 206 and part == mp4[:100] and headers["Content-Range"] == f"bytes 0-99/{len(mp4)}"
    # after completion the stream replays the file, multipart JPEG parts, each with its index
    status, headers, body = raw(server.url, f"/v1/videos/{job['id']}/stream")
    assert status == 200 and headers["Content-Type"].startswith("multipart/x-mixed-replace")
    assert body.count(b"Content-Type: image/jpeg") == 24 and b"X-Frame-Index: 23" in body
    assert job["id"] in [j["id"] for j in client.list()]
    status, _, metrics = raw(server.url, "/metrics")
    assert status == 200 and b'miga_jobs{status="completed"}' in metrics and b"miga_queue_depth" in metrics


def test_a_late_client_gets_the_frames_so_far_then_live_ones(server):
    client = server.client()
    job = client.create(prompt=PROMPT, frames=400, seed=1)
    wait_for(lambda: client.get(job["id"])["frames_done"] >= 8)
    frames = client.frames(job["id"])
    first = [next(frames) for _ in range(3)]
    assert [i for i, _ in first] == [0, 1, 2]  # from the start, though it connected late
    stalled = client.frames(job["id"])
    next(stalled)  # a client that reads one frame and stops reading: the renderer goes on regardless
    wait_for(lambda: client.get(job["id"])["status"] == "completed", timeout=120)
    rest = [i for i, _ in frames]
    assert rest == list(range(3, 400))  # the first client, reading on, got every frame in order


def test_cancel(server):
    client = server.client()
    job = client.create(prompt=PROMPT, frames=4000)
    wait_for(lambda: client.get(job["id"])["status"] == "running")
    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(ServiceError) as err:
        client.content(job["id"])
    assert err.value.status == 409
    queued = client.create(prompt=PROMPT, frames=8)  # cancelling is idempotent, also for finished jobs
    client.wait(queued["id"])
    assert client.cancel(queued["id"])["status"] == "completed"


BAD = [
    ({"prompt": PROMPT, "frames": 0}, "frames"),
    ({"prompt": PROMPT, "frames": 10**6}, "frames"),
    ({"prompt": PROMPT, "frames": "many"}, "frames"),
    ({"prompt": PROMPT, "mode": "zigzag"}, "mode"),
    ({"prompt": PROMPT, "seed": -1}, "seed"),
    ({"prompt": PROMPT, "steps": 0}, "steps"),
    ({"prompt": PROMPT, "steps": 500}, "steps"),
    ({"prompt": PROMPT, "guidance": float("nan")}, "guidance"),
    ({"prompt": PROMPT, "guidance": -2}, "guidance"),
    ({"prompt": PROMPT, "size": "big"}, "size"),
    ({"prompt": PROMPT, "size": "10x10"}, "size"),
    ({"prompt": "x" * 5000}, "prompt"),
    ({"prompt": "a zebra moving left on a striped blue background"}, "prompt"),
    ({"prompt": PROMPT, "colour": "red"}, "colour"),
    ({}, "prompt"),
    ({"prompt_schedule": "soon:a red circle"}, "prompt_schedule"),
    ({"prompt": PROMPT, "negative_prompt": 3}, "negative_prompt"),
]


@pytest.mark.parametrize("body,field", BAD, ids=[f"{f}{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_fields_are_422_naming_the_field(server, body, field):
    status, _, data = raw(server.url, "/v1/videos", "POST", body)
    detail = json.loads(data)["detail"]
    assert status == 422 and field in [d["loc"][-1] for d in detail], detail


def test_unknown_ids_body_size_and_paths(server):
    assert raw(server.url, "/v1/videos/video_" + "0" * 32)[0] == 404
    assert raw(server.url, "/v1/videos/..%2F..%2Fetc%2Fpasswd/content")[0] == 404
    assert raw(server.url, "/v1/videos", "POST", b"{" + b" " * 100_000 + b"}")[0] == 413
    assert raw(server.url, "/v1/videos", "POST", b"not json")[0] == 422


def test_token_auth(tiny_model, tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    srv = Server(tiny_model, tmp_path / "state", "--token-file", str(tmp_path / "token")).start()
    try:
        assert raw(srv.url, "/v1/videos")[0] == 401
        assert raw(srv.url, "/v1/videos", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert raw(srv.url, "/v1/videos", "POST", {"prompt": PROMPT, "frames": 4})[0] == 401
        assert raw(srv.url, "/v1/videos", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert srv.client("s3cret-token").create(prompt=PROMPT, frames=4)["status"] in ("queued", "running")
        assert raw(srv.url, "/")[0] == 200 and raw(srv.url, "/healthz")[0] == 200  # the page asks for the token
    finally:
        srv.stop()


def test_queue_full_is_429(tiny_model, tmp_path):
    srv = Server(tiny_model, tmp_path / "state", "--max-queue", "1").start()
    try:
        client = srv.client()
        running = client.create(prompt=PROMPT, frames=4000)
        wait_for(lambda: client.get(running["id"])["status"] == "running")
        queued = client.create(prompt=PROMPT, frames=8)
        status, headers, _ = raw(srv.url, "/v1/videos", "POST", {"prompt": PROMPT, "frames": 8})
        assert status == 429 and int(headers["Retry-After"]) > 0
        client.cancel(running["id"])
        assert client.wait(queued["id"])["status"] == "completed"  # the queue drains; nothing accepted is lost
    finally:
        srv.stop()


def test_kill_9_mid_job_then_restart_finishes_it(tiny_model, tmp_path):
    srv = Server(tiny_model, tmp_path / "state").start()
    try:
        client = srv.client()
        job = client.create(prompt=PROMPT, frames=160, seed=5)
        wait_for(lambda: client.get(job["id"])["frames_done"] >= 40)
        srv.kill()
        srv.start()
        done = client.wait(job["id"], timeout=120)
        assert done["status"] == "completed" and done["frames_done"] == 160
        again = client.wait(client.create(prompt=PROMPT, frames=160, seed=5)["id"])  # uninterrupted
        assert again["status"] == "completed"
        assert client.content(job["id"]) == client.content(again["id"])  # byte-identical video
    finally:
        srv.stop()


FUZZED = {
    "prompt": st.one_of(st.just(PROMPT), st.text(max_size=30), st.integers(), st.none()),
    "prompt_schedule": st.one_of(st.just(f"0:{PROMPT}"), st.text(max_size=30)),
    "frames": st.one_of(st.integers(-5, 20), st.integers(), st.floats(), st.text(max_size=5)),
    "mode": st.one_of(st.sampled_from(["fifo", "miga", "miga-stream"]), st.text(max_size=8)),
    "seed": st.one_of(st.integers(-2, 2**64), st.floats(allow_nan=True)),
    "steps": st.one_of(st.integers(-2, 2000), st.none()),
    "guidance": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
    "size": st.one_of(st.just("8x8"), st.just("16x8"), st.text(max_size=10), st.integers()),
    "negative_prompt": st.one_of(st.text(max_size=20), st.none()),
    "other": st.integers(),  # not a field: always a 422
}
BODIES = st.fixed_dictionaries({}, optional=FUZZED)


def test_the_fuzzed_fields_are_the_schemas(server):
    schema = json.loads(raw(server.url, "/openapi.json")[2])
    fields = set(schema["components"]["schemas"]["VideoCreate"]["properties"])
    assert fields == set(FUZZED) - {"other"}  # every field of the request model is fuzzed


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_bodies_never_500(server, body):
    status, _, data = raw(server.url, "/v1/videos", "POST", body)
    assert status in (202, 422, 429), (status, body, data[:500])
    if status == 202:
        server.client().cancel(json.loads(data)["id"])


def test_bundled_model_end_to_end(tmp_path):
    srv = Server("default", tmp_path / "state").start()
    try:
        client = srv.client()
        job = client.create(prompt="a red circle moving left on a striped blue background", frames=8)
        frames = [f for _, f in client.frames(job["id"])]
        assert len(frames) == 8 and frames[0].shape == (32, 32, 3) and np.ptp(np.stack(frames)) > 50
        assert client.wait(job["id"])["status"] == "completed"
    finally:
        srv.stop()
