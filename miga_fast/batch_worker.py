"""The work of one batch worker (this process, a spawned process or a Ray actor): the model loaded once per
process, then units of jobs rendered into the output folder, one manifest row per job (`batch.py` writes them).

A unit is one job (a resumable `VideoGenerator.render`) or a pack of jobs of one group rendered in one engine run
(`pack_frames`: latents packed along channels, `runtime/batch.py`).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .jobs import Job

_GENERATORS: dict = {}


_DEVICE: str | None = None  # this worker process's own device (one GPU each), set by `claim_device`


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each local worker: on a multi-GPU host "cuda" spreads them one per GPU ("cuda:0",
    "cuda:1", ...; round robin past the count); any other device (cpu, "cuda:1") is shared as given."""
    count = torch.cuda.device_count() if device == "cuda" else 0
    return [f"cuda:{i % count}" for i in range(workers)] if count > 1 else [device] * workers


def claim_device(devices) -> None:
    """ProcessPoolExecutor initializer: take one device of the shared queue for this process."""
    global _DEVICE
    _DEVICE = devices.get()


def worker_generator(model: str | None, device: str, threads: int | None):
    from .models.tiny.bundle import DEFAULT_WEIGHTS
    from .pipeline import load

    if threads:
        torch.set_num_threads(threads)
    key = (str(model or DEFAULT_WEIGHTS), _DEVICE or device)
    if key not in _GENERATORS:
        _GENERATORS[key] = load(key[0], device)
    return _GENERATORS[key]


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the worker process's peak so far


def render_jobs(model: str | None, device: str, threads: int | None, outdir: str, checkpoint_every: int | None,
                jobs: list[Job]) -> list[dict]:
    """Render `jobs` (one video, or a pack of several) in this process; one manifest row per job."""
    gen = worker_generator(model, device, threads)
    device = str(gen.device)
    start = time.perf_counter()
    try:
        if len(jobs) == 1:
            r = gen.render(Path(outdir) / f"{jobs[0].id}.mp4", progress=False, resume=True,
                           checkpoint_every=checkpoint_every, **jobs[0].args)
            done = [(jobs[0], r.frames, r.rendered, r.resumed_from)]
            status = "interrupted" if r.interrupted else "done"
        else:
            done = [(job, n, n, 0) for job, n in render_pack(gen, jobs, Path(outdir))]
            status = "done"
        error = None
    except Exception as exc:  # noqa: BLE001 (recorded in the manifest; the batch goes on)
        done, error = [(job, 0, 0, 0) for job in jobs], f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    seconds = time.perf_counter() - start
    rows = []
    for job, frames, rendered, resumed in done:
        rows.append({"id": job.id, "status": "failed" if error else status, "frames": frames,
                     "seconds": round(seconds / len(jobs), 3), "fps": round(rendered * len(jobs) / seconds, 3)
                     if rendered and not error else 0.0, "resumed_from": resumed, "packed": len(jobs),
                     "peak_mb": round(_peak_mb(device), 1), "pid": os.getpid(), "digest": job.digest(),
                     "config": dataclasses.asdict(gen.config(job.args.get("mode", "miga-stream"),
                                                             job.args.get("steps"))),
                     "weights": gen.weights_hash(), "error": error, "line": job.line})
    return rows


def pack_engine_mode(req, device: torch.device) -> tuple[str, str | None]:
    """The engine mode of a pack of requests like `req`: its `engine_mode`, with "auto" resolved as a single render
    resolves it (`choose_mode`), at the cold-start break-even: a packed engine's compiled code (latents
    [V*C, H, W], the packed denoiser) is its own, so another render's compile marker says nothing about it."""
    if req.engine_mode != "auto":
        return req.engine_mode, None
    from .runtime.compile_cache import choose_mode

    return choose_mode(torch.device(device), req.frames, warm=False)


def pack_frames(gen, reqs: list) -> Iterator[tuple[int, np.ndarray]]:
    """(video index, uint8 frame [H, W, 3]) of V validated requests of one group (equal frames, plan, size, CFG)
    rendered by ONE engine run over packed latents [V*C, H, W], in the order the frames finish. Video v gets the
    keyed noise of its own render, so its frames are its `gen.stream` frames up to float rounding of the batch."""
    from .pipeline import LATENT_DTYPE
    from .runtime.batch import PackedDenoiser, pack_conditions, unpack_latent
    from .runtime.factory import make_engine
    from .video import to_uint8

    first, v = reqs[0], len(reqs)
    c, h, w = gen.bundle.latent_shape(first.size)
    mode, why = pack_engine_mode(first, gen.device)
    engine = make_engine(gen.bundle, first.cfg, size=first.size, denoise=PackedDenoiser(gen.bundle.denoise, v),
                         latent_shape=(v * c, h, w), guidance_scale=first.guidance_scale,
                         cond=pack_conditions([r.conds[0] for r in reqs]),
                         uncond=pack_conditions([r.uncond for r in reqs]), seed=0, device=gen.device,
                         dtype=LATENT_DTYPE, mode=mode)
    if why:
        engine.mode_why["auto"] = why
    engine.noise = PackedNoise([r.seed for r in reqs], gen.device, engine.noise.method)
    codec = gen.bundle.codec
    decoders = [codec.stream_decoder() for _ in reqs]
    counts = [0] * v
    with torch.no_grad():
        for latent in engine.run(codec.latents_for(first.frames)):
            for i, lat in enumerate(unpack_latent(latent, v)):
                for frame in decoders[i].push(lat)[: first.frames - counts[i]]:
                    counts[i] += 1
                    yield i, to_uint8(frame)
        for i, decoder in enumerate(decoders):  # a decoder that holds frames back until the end (FrameStream)
            for frame in decoder.flush()[: first.frames - counts[i]]:
                counts[i] += 1
                yield i, to_uint8(frame)


def render_pack(gen, jobs: list[Job], outdir: Path) -> list[tuple[Job, int]]:
    """Jobs of one group in one packed engine run (`pack_frames`); each video is written to a temporary file and
    renamed into place when complete. A pack has no checkpoints: killed, it renders again."""
    from .segments import concat
    from .video import VideoWriter, check_output_path

    tmp = [outdir / f".{job.id}.pack.mp4" for job in jobs]
    writers = [VideoWriter(check_output_path(t), fps=gen.bundle.fps, scale=gen.bundle.render_scale) for t in tmp]
    counts = [0] * len(jobs)
    try:
        for i, frame in pack_frames(gen, [gen.request(**job.args) for job in jobs]):
            writers[i].append(frame)
            counts[i] += 1
    finally:
        for writer in writers:
            writer.close()
    for t, job in zip(tmp, jobs, strict=True):  # stream copy through concat: fsync + atomic rename
        concat([t], outdir / f"{job.id}.mp4")
        t.unlink()
    return list(zip(jobs, counts, strict=True))


class PackedNoise:
    """Keyed noise for packed latents [V*C, H, W]: video v's channels get what `CounterNoise(seeds[v])` draws
    for [C, H, W], so a packed video sees the noise of its own unpacked render."""

    def __init__(self, seeds: list[int], device, method: str):
        from .runtime.noise import CounterNoise

        self.videos = [CounterNoise(s, device, method) for s in seeds]
        self.method, self.seed = method, seeds[0]

    def draw(self, stream, serials, levels, shape, dtype=torch.float32):
        c = shape[0] // len(self.videos)
        return torch.cat([n.draw(stream, serials, levels, (c, *shape[1:]), dtype) for n in self.videos], dim=1)

    def reseed(self, seed: int) -> None:
        raise ConfigError("a packed run's noise is keyed per video; build a new PackedNoise")
