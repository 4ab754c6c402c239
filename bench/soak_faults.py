"""Soak with faults: a long render killed (SIGKILL) every K frames and resumed each time, against the same render
uninterrupted. Prints and writes frames lost, frames duplicated (both must be 0), checkpoint bytes, and the share
of render time spent writing checkpoints (segments cut + state file). Runs `bench/soak.py --kill-every K`.

    python bench/soak.py --kill-every 1000 --latents 10000               # tiny random model (8x8): minutes
    python bench/soak.py --kill-every 50 --latents 300 --checkpoint-every 16 --out-dir bench/results/quick

Each render runs in its own process (`worker`: gen.render(..., resume=True), its RenderResult as JSON on stdout);
the parent kills it when the checkpoint folder holds the next K frames' segments, plus a random delay.
Frames are compared decoded, exactly (same machine, same executor, one thread in every process).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a red circle moving left on a striped blue background"


def tiny_model(path: Path) -> Path:
    """The tests' tiny random bundled-format model (8x8 frames, one block), saved once."""
    import torch

    from miga_fast.models.tiny.bundle import TinySpec, TinyVideoModel

    if not path.exists():
        torch.manual_seed(0)
        spec = TinySpec(frame_size=8, text_dim=16, dit=dict(patch_size=(1, 4, 4), num_attention_heads=2,
                                                             attention_head_dim=12, in_channels=3, out_channels=3,
                                                             text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1))
        TinyVideoModel(spec).save(path)
    return path


def worker(model: str, out: str, frames: int, every: int, mode: str) -> None:
    import miga_fast

    gen = miga_fast.load(model)
    r = gen.render(out, PROMPT, frames, mode=mode, checkpoint_every=every, resume=True, progress=False)
    print(json.dumps({"frames": r.frames, "seconds": r.seconds, "resumed_from": r.resumed_from,
                      "checkpoints": r.checkpoints, "checkpoint_seconds": r.checkpoint_seconds}))


def _start(args, model: Path, out: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(model), str(out), str(args.latents),
           str(args.checkpoint_every), args.mode]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frames_on_disk(out: Path, every: int) -> int:
    seg = out.with_name(out.name + ".ckpt") / "segments"
    return max(0, len(list(seg.glob("*.mp4"))) - 1) * every if seg.is_dir() else 0


def _hashes(path: Path) -> list[str]:
    from miga_fast.video import read_frames

    return [hashlib.sha1(f.tobytes()).hexdigest() for f in read_frames(path)]


def align(ref: list[str], got: list[str]) -> tuple[int, int]:
    """(frames of `ref` missing from `got`, extra frames of `got`), walking both in order."""
    i = j = lost = dup = 0
    while i < len(ref) and j < len(got):
        if ref[i] == got[j]:
            i, j = i + 1, j + 1
        elif j > 0 and got[j] == got[j - 1]:
            dup, j = dup + 1, j + 1
        else:
            lost, i = lost + 1, i + 1
    return lost + len(ref) - i, dup + len(got) - j


def run(args, out_dir: Path) -> int:
    from common import machine

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "faults_work"
    work.mkdir(exist_ok=True)
    model = tiny_model(work / "tiny.safetensors")
    ref, out = work / "uninterrupted.mp4", work / "killed.mp4"
    for p in (ref, out):
        p.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(p) + ".ckpt"], check=True)
    print(f"# uninterrupted render of {args.latents} frames ...", flush=True)
    proc = _start(args, model, ref)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        print(stderr, file=sys.stderr)
        return 1
    base = json.loads(stdout.strip().splitlines()[-1])
    rng = random.Random(args.seed)
    kills, ckpt_bytes, runs = 0, 0, 0
    start = time.perf_counter()
    while True:
        runs += 1
        proc = _start(args, model, out)
        target = (kills + 1) * args.kill_every
        while proc.poll() is None and _frames_on_disk(out, args.checkpoint_every) < target:
            state = out.with_name(out.name + ".ckpt") / "state.ckpt"
            if state.exists():
                ckpt_bytes = max(ckpt_bytes, state.stat().st_size)
            time.sleep(0.02)
        if proc.poll() is None:
            time.sleep(rng.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
            print(f"# killed at ~{_frames_on_disk(out, args.checkpoint_every)} frames (kill {kills})", flush=True)
            continue
        stdout, stderr = proc.communicate()
        if proc.returncode:
            print(stderr, file=sys.stderr)
            return 1
        break
    wall = time.perf_counter() - start
    lost, dup = align(_hashes(ref), _hashes(out))
    info = machine()
    row = {"frames": args.latents, "kill_every": args.kill_every, "checkpoint_every": args.checkpoint_every,
           "kills": kills, "processes": runs, "frames_lost": lost, "frames_duplicated": dup,
           "checkpoint_bytes": ckpt_bytes, "checkpoints_uninterrupted": base["checkpoints"],
           "checkpoint_seconds_uninterrupted": round(base["checkpoint_seconds"], 3),
           "render_seconds_uninterrupted": round(base["seconds"], 2),
           "checkpoint_share": round(base["checkpoint_seconds"] / base["seconds"], 4),
           "killed_wall_seconds": round(wall, 1), "identical_file": ref.read_bytes() == out.read_bytes(),
           "machine": f"{info['cpu']} ({info['threads']} threads), torch {info['torch']}", "mode": args.mode}
    (out_dir / "soak_faults.json").write_text(json.dumps(row, indent=1) + "\n")
    for k, v in row.items():
        print(f"{k:34s} {v}")
    ok = lost == 0 and dup == 0
    print(("PASS" if ok else "FAIL") + f": {lost} frames lost, {dup} duplicated over {kills} kills")
    return 0 if ok else 1


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    model, out, frames, every, mode = sys.argv[2:7]
    worker(model, out, int(frames), int(every), mode)
