"""A 6-job file (2 prompts x 3 seeds, 16-24 frames) for a tiny random model saved to disk, and its reference
batch: rendered once, uninterrupted, by `miga-fast batch` in a subprocess (one thread, as every render here)."""

import json
import os
import subprocess
import sys

import pytest

from miga_fast.video import read_frames
from tests.tiny_model import save_tiny

PROMPTS = ("a red circle moving left on a striped blue background",
           "a green square moving up on a dotted white background")
JOBS = [{"id": f"p{p}-s{s}", "prompt": prompt, "frames": 16 + 4 * s, "seed": 10 + s}
        for p, prompt in enumerate(PROMPTS) for s in range(3)]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # same threads in every process: same floats


def write_jobs(path, jobs=JOBS):
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def batch_command(jobs, outdir, model, *extra):
    return [sys.executable, "-m", "miga_fast.cli", "batch", str(jobs), "-o", str(outdir), "--model", str(model),
            "--threads", "1", "--checkpoint-every", "4", *extra]


def manifest(outdir):
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def videos(outdir, jobs=JOBS):
    return {j["id"]: read_frames(outdir / f"{j['id']}.mp4") for j in jobs}


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("batch-model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def reference(model, tmp_path_factory):
    """(job file, outdir, {id: frames}) of the uninterrupted batch (`miga-fast batch`, one thread)."""
    root = tmp_path_factory.mktemp("batch-ref")
    jobs = write_jobs(root / "jobs.jsonl")
    subprocess.run(batch_command(jobs, root / "out", model), env=ENV, check=True, capture_output=True, timeout=300)
    return jobs, root / "out", videos(root / "out")
