"""`miga-fast render` in a subprocess, killed (SIGKILL) or stopped (SIGINT / SIGTERM) at random points several
times in a row and resumed each time: the final video equals the uninterrupted render, no frame lost or doubled."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from miga_fast.video import read_frames
from tests.tiny_model import PROMPT

FRAMES, EVERY = 96, 8
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # same threads in every process: same floats


def command(weights, out, *extra):
    return [sys.executable, "-m", "miga_fast.cli", "render", PROMPT, "--model", str(weights), "--frames",
            str(FRAMES), "--checkpoint-every", str(EVERY), "-o", str(out), *extra]


@pytest.fixture(scope="module")
def reference(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.mp4"
    subprocess.run(command(weights, out), env=ENV, check=True, capture_output=True)
    return read_frames(out)


def closed_segments(out):
    folder = out.parent / (out.name + ".ckpt") / "segments"
    return max(0, len(list(folder.glob("*.mp4"))) - 1) if folder.is_dir() else 0


def run_until(weights, out, segments, sig, rng):
    """Start a (resuming) render; once `segments` segments are closed (at least one more than it resumed from, so
    it is past start-up), wait a random moment and send `sig`."""
    segments = max(segments, closed_segments(out) + 1)
    proc = subprocess.Popen(command(weights, out, "--resume"), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while closed_segments(out) < segments and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.15))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def assert_preview(frames, reference):
    """The file written on a stop: its closed segments are the uninterrupted render's bytes, so their frames are
    equal; the frames since the last cut are one more (shorter) encode of the same frames, so only close."""
    closed = len(frames) // EVERY * EVERY
    assert all(np.array_equal(a, b) for a, b in zip(frames[:closed], reference, strict=False))
    for a, b in zip(frames[closed:], reference[closed:], strict=False):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 4.0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["KILL", "INT", "TERM"])
def test_killed_again_and_again_then_resumed_equals_the_uninterrupted_render(weights, reference, tmp_path, sig):
    rng = random.Random(int(sig))
    out = tmp_path / "out.mp4"
    for segments in sorted(rng.sample(range(1, FRAMES // EVERY - 2), 3)):
        code, stdout, stderr = run_until(weights, out, segments, sig, rng)
        assert "Traceback" not in stderr, stderr
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        elif code == 130:  # a checkpoint at the next latent end, and the file with every frame so far
            assert "--resume" in stdout
            frames = read_frames(out)
            assert 0 < len(frames) < FRAMES
            assert_preview(frames, reference)
        else:  # the render finished before the signal arrived: nothing to check here
            assert code == 0, stderr
    proc = subprocess.run(command(weights, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    frames = read_frames(out)
    assert len(frames) == len(reference) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference, strict=True))
    assert not (tmp_path / "out.mp4.ckpt").exists()
    again = subprocess.run(command(weights, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stdout
