"""`miga-fast batch` / `miga_fast.batch.run`: videos equal `miga-fast render`, a SIGKILLed batch rerun renders each
job exactly once, local worker processes, packing, failures recorded, a changed job refused."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from miga_fast import batch, batch_worker
from miga_fast.errors import ConfigError, RenderError
from miga_fast.video import read_frames

from .conftest import ENV, JOBS, batch_command, manifest, videos, write_jobs


def test_manifest_rows(reference):
    _, out, _ = reference
    rows = manifest(out)
    assert [r["id"] for r in rows] == [j["id"] for j in JOBS]  # one group: in file order, each once
    for row, job in zip(rows, JOBS, strict=True):
        assert row["status"] == "done" and row["frames"] == job["frames"] and row["error"] is None
        assert row["seconds"] > 0 and row["fps"] > 0 and row["peak_mb"] > 0 and len(row["weights"]) == 64
        assert row["config"]["mode"] == "miga-stream" and row["line"] == JOBS.index(job) + 1
    assert not list(out.glob("*.ckpt")) and not list(out.glob(".*"))  # no checkpoint or temporary file left


@pytest.mark.parametrize("job", [JOBS[0], JOBS[5]], ids=["p0-s0", "p1-s2"])
def test_videos_equal_miga_fast_render(reference, model, tmp_path, job):
    _, _, frames = reference
    path = tmp_path / "render.mp4"  # checkpoints as often as the batch's: the same mp4 segments
    subprocess.run([sys.executable, "-m", "miga_fast.cli", "render", job["prompt"], "--frames", str(job["frames"]),
                    "--seed", str(job["seed"]), "--model", str(model), "--checkpoint-every", "4", "-o", str(path)],
                   env=ENV, check=True, capture_output=True, timeout=120)
    rendered = read_frames(path)
    assert len(rendered) == job["frames"] and np.array_equal(np.stack(rendered), np.stack(frames[job["id"]]))


def test_sigkill_halfway_then_rerun_renders_each_job_once(reference, model, tmp_path):
    """SIGKILL once 2 jobs are done and the third is past its first checkpoint; the same command again finishes:
    every job has exactly one manifest row, the third resumed, every video equals the uninterrupted one."""
    jobs, _, expected = reference
    out = tmp_path / "out"
    proc = subprocess.Popen(batch_command(jobs, out, model), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    third = out / f"{JOBS[2]['id']}.mp4.ckpt" / "segments"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and len(list(third.glob("*.mp4"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    done_before = [r["id"] for r in manifest(out)]
    assert done_before == [j["id"] for j in JOBS[:2]]  # killed in the third job, past its second checkpoint
    again = subprocess.run(batch_command(jobs, out, model), env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = manifest(out)
    assert sorted(r["id"] for r in rows) == sorted(j["id"] for j in JOBS)  # each job rendered exactly once
    resumed = {r["id"]: r["resumed_from"] for r in rows}
    assert resumed[JOBS[2]["id"]] >= 8 and all(resumed[j["id"]] == 0 for j in JOBS[3:])
    got = videos(out)
    assert all(np.array_equal(np.stack(got[k]), np.stack(expected[k])) for k in expected)
    third_run = subprocess.run(batch_command(jobs, out, model), env=ENV, capture_output=True, text=True, timeout=120)
    assert third_run.returncode == 0 and len(manifest(out)) == len(JOBS)  # all done: nothing rendered again


def test_local_worker_processes(reference, model, tmp_path):
    jobs, _, expected = reference
    out = tmp_path / "out"
    rows = batch.run(jobs, out, model=str(model), workers=2, threads=1, checkpoint_every=4, progress=False)
    assert [r["status"] for r in rows] == ["done"] * len(JOBS) and len({r["pid"] for r in rows}) == 2
    got = videos(out)
    assert all(np.array_equal(np.stack(got[k]), np.stack(expected[k])) for k in expected)


def test_packed_videos_equal_their_own_renders(model, tmp_path):
    """pack=3: three jobs of one group and length render as one engine run; each packed video's frames are its own
    `stream` frames up to float rounding of the wider batch, and the batch writes them (one encode) as its files."""
    from miga_fast.jobs import read_jobs
    from miga_fast.pipeline import load

    same_length = [dict(j, frames=16) for j in JOBS[:3]]
    jobs = write_jobs(tmp_path / "jobs.jsonl", same_length)
    gen = load(str(model))
    reqs = [gen.request(**job.args) for job in read_jobs(jobs)[0]]
    packed = [[], [], []]
    for i, frame in batch_worker.pack_frames(gen, reqs):
        packed[i].append(frame)
    for job, frames in zip(same_length, packed, strict=True):
        alone = np.stack(list(gen.stream(job["prompt"], frames=16, seed=job["seed"]))).astype(int)
        diff = np.abs(np.stack(frames).astype(int) - alone)
        assert len(frames) == 16 and diff.max() <= 1 and diff.mean() < 0.01, (job["id"], diff.max(), diff.mean())
    assert np.abs(np.stack(packed[0]).astype(int) - np.stack(packed[1]).astype(int)).mean() > 2  # own noise each
    rows = batch.run(jobs, tmp_path / "packed", model=str(model), pack=3, progress=False)
    assert [r["packed"] for r in rows] == [3, 3, 3] and [r["status"] for r in rows] == ["done"] * 3
    batch.run(jobs, tmp_path / "alone", model=str(model), progress=False)
    files, alone = videos(tmp_path / "packed", same_length), videos(tmp_path / "alone", same_length)
    for job in same_length:  # two lossy x264 encodes (one file, vs checkpoint segments) of equal frames
        got, ref = np.stack(files[job["id"]]).astype(int), np.stack(alone[job["id"]]).astype(int)
        assert got.shape == ref.shape == (16, 32, 32, 3) and np.abs(got - ref).mean() < 2  # measured ~1.1
    assert not list((tmp_path / "packed").glob(".*"))


def test_a_pack_resolves_engine_mode_auto_as_a_cold_single_render(model):
    from miga_fast.pipeline import load
    from miga_fast.runtime.compile_cache import BREAK_EVEN_FRAMES

    gen = load(str(model))
    cold = BREAK_EVEN_FRAMES["cold"]
    cases = [("auto", cold - 1, "eager"), ("auto", cold, "compile"), ("eager", 10 * cold, "eager"),
             ("compile", 4, "compile")]
    for asked, frames, expected in cases:
        req = gen.request(JOBS[0]["prompt"], frames, engine_mode=asked)
        mode, why = batch_worker.pack_engine_mode(req, torch.device("cpu"))
        assert mode == expected and (why is None) == (asked != "auto") and (why is None or "cold-start" in why)
    assert batch_worker.pack_engine_mode(req, torch.device("cuda"))[0] == "compile"  # explicit: kept
    auto = gen.request(JOBS[0]["prompt"], 16, engine_mode="auto")
    assert batch_worker.pack_engine_mode(auto, torch.device("cuda"))[0] == "auto"  # CUDA graphs with fallback


def test_a_failing_job_is_recorded_and_the_batch_goes_on(model, tmp_path, monkeypatch):
    from miga_fast.pipeline import VideoGenerator

    render = VideoGenerator.render

    def failing(self, path, *a, **kw):
        if kw.get("seed") == 11:
            raise RenderError("NaN in the model call (simulated)")
        return render(self, path, *a, **kw)

    monkeypatch.setattr(VideoGenerator, "render", failing)
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:3])
    rows = batch.run(jobs, tmp_path / "out", model=str(model), progress=False)
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert "NaN in the model call" in rows[1]["error"] and not (tmp_path / "out" / "p0-s1.mp4").exists()
    with pytest.raises(RenderError, match=r"jobs.jsonl:2: job p0-s1 failed: .*fail_fast"):
        batch.run(jobs, tmp_path / "out", model=str(model), progress=False, fail_fast=True)
    monkeypatch.setattr(VideoGenerator, "render", render)  # fixed: the rerun renders only the failed job
    rows = batch.run(jobs, tmp_path / "out", model=str(model), progress=False)
    assert [r["status"] for r in rows] == ["done"] * 3
    assert [r["id"] for r in manifest(tmp_path / "out") if r["status"] == "done"] == ["p0-s0", "p0-s2", "p0-s1"]


def test_a_changed_job_under_a_finished_id_is_refused(model, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:1])
    batch.run(jobs, tmp_path / "out", model=str(model), progress=False)
    write_jobs(jobs, [dict(JOBS[0], seed=99)])
    with pytest.raises(ConfigError, match=r"jobs.jsonl:1: job 'p0-s0' was rendered .* with other arguments"):
        batch.run(jobs, tmp_path / "out", model=str(model), progress=False)


def test_api_takes_a_job_list(model, tmp_path):
    from miga_fast.jobs import read_jobs

    jobs, problems = read_jobs(write_jobs(tmp_path / "jobs.jsonl", JOBS[:1]))
    rows = batch.run(jobs, tmp_path / "out", model=str(model), progress=False)
    assert problems == [] and rows[0]["id"] == "p0-s0" and json.dumps(rows)  # rows are plain JSON


def test_local_workers_take_one_gpu_each(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert batch_worker.worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert batch_worker.worker_devices("cuda:1", 2) == ["cuda:1", "cuda:1"]  # a named device is shared as given
    assert batch_worker.worker_devices("cpu", 2) == ["cpu", "cpu"]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert batch_worker.worker_devices("cuda", 2) == ["cuda", "cuda"]
