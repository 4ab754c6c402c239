"""The HTTP service: OpenAI-style video jobs over one loaded model (FastAPI; schema at /openapi.json).

    POST   /v1/videos                 {prompt | prompt_schedule, frames, mode, seed, steps, guidance, size,
                                       negative_prompt} -> 202 job (429 + Retry-After when the queue is full)
    GET    /v1/videos                 {"object": "list", "data": [job, ...]} (newest first)
    GET    /v1/videos/{id}            job: id, status queued|running|completed|failed|cancelled, progress, ...
    DELETE /v1/videos/{id}            cancel: the render stops at the next frame; the job is marked cancelled
    GET    /v1/videos/{id}/content    the mp4 (Range requests served), once completed
    GET    /v1/videos/{id}/stream     frames as they finish: multipart/x-mixed-replace JPEG (an <img> or curl
                                      plays it) or, with ?format=ndjson, one JSON line per frame (base64 JPEG);
                                      a late client gets the frames held so far, then live ones; every part
                                      says its frame index and how many frames that client missed
    GET    /healthz, /metrics (Prometheus), / (the web page)

With a token, every request but `/` (the page, which asks for it) and `/healthz` needs `Authorization: Bearer`.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

from ..errors import ConfigError
from .hub import FrameHub
from .schemas import MAX_BODY_BYTES, VideoCreate
from .store import JobStore, is_job_id
from .worker import QueueFull, RenderWorker

STATIC = Path(__file__).resolve().parent / "static"
FIELDS = {"prompt": "prompt", "prompt_schedule": "prompt_schedule", "frames": "frames", "mode": "mode",
          "seed": "seed", "steps": "steps", "guidance_scale": "guidance", "size": "size",
          "negative_prompt": "negative_prompt"}
BOUNDARY = "miga-frame"


def _field_error(field: str, message: str, status: int = 422):
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, status)


def _field_of(message: str) -> str:
    """The request field a ConfigError names (its first word: `require`'s '<argument> must be ...')."""
    word = message.split()[0].strip(":'\"") if message.split() else ""
    return FIELDS.get(word, "prompt" if "prompt" in message.lower() else "body")


def create_app(gen, state_dir: str | Path, *, max_queue: int = 16, token: str | None = None,
               max_frames: int = 4096, max_steps: int = 100, checkpoint_every: int = 16):
    """The FastAPI app over `gen` (a VideoGenerator): jobs and videos under `state_dir`. max_frames / max_steps
    bound one job's work (the FIFO queue holds `steps` latents: a cancel waits for the latent in flight)."""
    import anyio
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

    state = Path(state_dir)
    (state / "videos").mkdir(parents=True, exist_ok=True)
    store, hub = JobStore(state / "jobs.sqlite3"), FrameHub()
    worker = RenderWorker(gen, store, hub, state / "videos", max_queue, checkpoint_every)

    @asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = 256  # one thread per open stream
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="miga_fast", version="1", lifespan=lifespan,
                  description="Long video generation with a FIFO / MIGA queue: OpenAI-style video jobs.")
    app.state.worker, app.state.store = worker, store

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc):
        # FastAPI's own handler echoes the input, which fails to serialise for NaN / Infinity (a 500)
        return JSONResponse({"detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                                        for e in exc.errors()]}, 422)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body must be at most {MAX_BODY_BYTES} bytes"}, 413)
        if token is not None and request.url.path not in ("/", "/healthz"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def job_of(video_id: str):
        job = store.get(video_id) if is_job_id(video_id) else None  # nothing else reaches the database
        if job is None:
            raise HTTPException(404, f"no video job {video_id!r}")
        return job

    @app.post("/v1/videos", status_code=202)
    def create_video(body: VideoCreate):
        if (body.prompt is None) == (body.prompt_schedule is None):
            return _field_error("prompt", "give exactly one of prompt and prompt_schedule")
        if body.frames > max_frames:
            return _field_error("frames", f"frames must be at most {max_frames} on this server (got {body.frames})")
        if body.steps is not None and body.steps > max_steps:
            return _field_error("steps", f"steps must be at most {max_steps} on this server (got {body.steps})")
        args = body.render_args()
        try:
            gen.request(**args)  # the model's own checks: prompt words, size multiples, ... (nothing rendered)
        except ConfigError as exc:
            message = " ".join(str(exc).split())
            field = _field_of(message)
            if field == "prompt" and body.prompt_schedule is not None:  # its prompts are the schedule's
                field = "prompt_schedule"
            return _field_error(field, message)
        try:
            job = worker.submit(args)
        except QueueFull:
            return JSONResponse({"detail": f"the queue is full ({max_queue} jobs waiting); retry later"}, 429,
                                headers={"Retry-After": "10"})
        return job.public()

    @app.get("/v1/videos")
    def list_videos(limit: int = 100):
        if not 1 <= limit <= 1000:
            raise HTTPException(422, "limit must be in [1, 1000]")
        return {"object": "list", "data": [j.public() for j in store.list(limit)]}

    @app.get("/v1/videos/{video_id}")
    def get_video(video_id: str):
        job = job_of(video_id)
        return job.public()

    @app.delete("/v1/videos/{video_id}")
    def cancel_video(video_id: str):
        job = job_of(video_id)
        if job.status in ("queued", "running"):
            worker.cancel(job.id)
            deadline = time.monotonic() + 10  # the render stops at its next frame
            while store.get(job.id).status == "running" and time.monotonic() < deadline:
                time.sleep(0.02)
        return store.get(job.id).public()

    @app.get("/v1/videos/{video_id}/content")
    def video_content(video_id: str):
        job = job_of(video_id)
        if job.status != "completed":
            raise HTTPException(409, f"video {job.id} is {job.status}, not completed")
        return FileResponse(worker.path(job.id), media_type="video/mp4", filename=f"{job.id}.mp4")

    @app.get("/v1/videos/{video_id}/stream")
    def video_stream(video_id: str, format: str = "multipart"):  # noqa: A002 (the query parameter's name)
        job = job_of(video_id)
        if format not in ("multipart", "ndjson"):
            raise HTTPException(422, "format must be 'multipart' or 'ndjson'")
        frames = _frames(job)
        headers = {"Cache-Control": "no-store", "X-Frames-Dropped": "per frame (part header / JSON field)"}
        if format == "ndjson":
            lines = (json.dumps({"index": i, "dropped": d, "jpeg": base64.b64encode(b).decode()}) + "\n"
                     for i, b, d in frames)
            return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)
        parts = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(b)}\r\nX-Frame-Index: {i}\r\n"
                 f"X-Frames-Dropped: {d}\r\n\r\n".encode() + b + b"\r\n" for i, b, d in frames)
        return StreamingResponse(parts, media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers=headers)

    def _frames(job):
        """Live frames while the job runs; a finished job's from its mp4; a queued job's once it starts."""
        deadline = time.monotonic() + 600
        while not hub.is_live(job.id) and store.get(job.id).status == "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        if hub.is_live(job.id):
            yield from hub.frames(job.id)
        elif store.get(job.id).status == "completed":
            from ..video import read_frames
            from .hub import jpeg

            for i, frame in enumerate(read_frames(worker.path(job.id))):
                yield i, jpeg(frame), 0

    registry = CollectorRegistry()
    Gauge("miga_queue_depth", "jobs waiting", registry=registry).set_function(worker.depth)
    by_status = Gauge("miga_jobs", "jobs by status", ["status"], registry=registry)
    Gauge("miga_frames_per_second", "frames/s of the job rendering now", registry=registry).set_function(
        lambda: worker.fps)
    Gauge("miga_frames_rendered", "frames rendered since start", registry=registry).set_function(
        lambda: worker.frames_total)
    Gauge("miga_device_memory_bytes", "peak device memory (CUDA allocator; RSS peak on CPU)",
          registry=registry).set_function(lambda: _memory(gen))

    @app.get("/metrics")
    def metrics():
        for status, n in store.counts().items():
            by_status.labels(status).set(n)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": gen.family, "queue_depth": worker.depth(), "running": worker.current}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    return app


def _memory(gen) -> float:
    import resource

    import torch

    if gen.device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(gen.device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def serve(model: str | None = None, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_queue: int = 16, token_file: str | None = None, state_dir: str = "miga-state",
          max_frames: int = 4096, max_steps: int = 100) -> None:
    """Load the model once and serve until interrupted (`miga-fast serve`)."""
    import uvicorn

    from ..pipeline import load, load_default

    token = None
    if token_file is not None:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ConfigError(f"--token-file {token_file!r} is empty")
    gen = load_default(device) if model in (None, "default") else load(model, device)
    app = create_app(gen, state_dir, max_queue=max_queue, token=token, max_frames=max_frames, max_steps=max_steps)
    print(f"miga-fast serve: http://{host}:{port}/ (model {gen.family}, state in {state_dir}/)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
