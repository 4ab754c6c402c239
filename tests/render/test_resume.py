"""Resumable renders in-process: stop / resume equals an uninterrupted render frame for frame; faults (a write
error, a full filesystem, NaN from the denoiser) keep the last good checkpoint; a checkpoint of another model,
config, version, or a truncated one, is refused with one clear error."""

import dataclasses
import errno
import os
import subprocess

import numpy as np
import pytest

from miga_fast import checkpoint
from miga_fast.errors import CheckpointError, ConfigError, NonFiniteError, RenderError
from miga_fast.pipeline import VideoGenerator, load
from miga_fast.video import read_frames
from tests.tiny_model import PROMPT, save_tiny

N, EVERY = 30, 4


@pytest.fixture(scope="module")
def gen(weights):
    return load(weights)


@pytest.fixture(scope="module")
def reference(gen, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "full.mp4"
    gen.render(path, PROMPT, N, checkpoint_every=EVERY, progress=False)
    return path, read_frames(path)


def same_video(path, reference):
    ref_path, ref_frames = reference
    frames = read_frames(path)
    if not len(frames) == len(ref_frames) == N:
        return False
    return all(np.array_equal(a, b) for a, b in zip(frames, ref_frames, strict=True))


def stop_at(frame):
    """stop() for render: True once `frame` frames were produced (counted by the callback)."""
    seen = {"n": 0}
    return (lambda n: seen.update(n=n)), (lambda: seen["n"] >= frame)


def test_uninterrupted_render_leaves_no_checkpoint(reference):
    path, frames = reference
    assert len(frames) == N and not (path.parent / "full.mp4.ckpt").exists()


def test_stop_and_resume_again_and_again_equals_the_uninterrupted_render(gen, reference, tmp_path):
    out = tmp_path / "out.mp4"
    for at in (3, 9, 10, 21):  # mid-interval, right after a cut, ...
        callback, stop = stop_at(at)
        r = gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True, stop=stop,
                       callback=callback)
        assert r.interrupted and r.frames == at
        assert len(read_frames(out)) == at  # the file plays with every frame so far
    r = gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)
    assert not r.interrupted and r.resumed_from == 21 and r.frames == N
    assert same_video(out, reference)
    assert out.read_bytes() == reference[0].read_bytes()  # the same segments, joined the same way
    assert not (tmp_path / "out.mp4.ckpt").exists()
    again = gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)
    assert again.already_done and again.frames == N


def test_an_unfinished_render_is_not_overwritten_without_resume(gen, tmp_path):
    out = tmp_path / "out.mp4"
    callback, stop = stop_at(5)
    gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, stop=stop, callback=callback)
    with pytest.raises(ConfigError, match="resume it"):
        gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False)


def test_resume_and_checkpoints_need_an_mp4(gen, tmp_path):
    with pytest.raises(ConfigError, match="need an .mp4"):
        gen.render(tmp_path / "x.gif", PROMPT, 4, resume=True, progress=False)
    with pytest.raises(ConfigError, match="checkpoint_every must be > 0"):
        gen.render(tmp_path / "x.mp4", PROMPT, 4, resume=True, checkpoint_every=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_keeps_the_last_checkpoint(gen, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    real, calls = checkpoint.write_atomic, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 4:  # the initial checkpoint, then frames 4 and 8; the one at frame 12 fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", failing)
    with pytest.raises(RenderError, match=r"No space left on device.*checkpoint at frame 8"):
        gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False)
    monkeypatch.setattr(checkpoint, "write_atomic", real)
    r = gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)
    assert r.resumed_from == 8 and same_video(out, reference)


@pytest.fixture
def small_fs(tmp_path):
    """A real 192 KiB tmpfs (needs root / CAP_SYS_ADMIN; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_filesystem_keeps_the_last_checkpoint(gen, small_fs, tmp_path):
    out = small_fs / "out.mp4"
    kw = dict(checkpoint_every=8, progress=False, scale=16)  # 128x128 noisy frames: the fs fills in ~100 frames
    with pytest.raises(RenderError, match="No space left on device") as err:
        gen.render(out, PROMPT, 400, **kw)
    assert "--resume" in str(err.value)
    kept = checkpoint.load(small_fs / "out.mp4.ckpt" / "state.ckpt")  # the last good checkpoint is whole
    assert kept["frames"] > 0 and kept["frames"] % 8 == 0
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)  # the user frees space
    r = gen.render(out, PROMPT, 400, resume=True, **kw)
    assert r.resumed_from == kept["frames"] and r.frames == 400
    ref = tmp_path / "ref.mp4"
    gen.render(ref, PROMPT, 400, **kw)
    assert out.read_bytes() == ref.read_bytes()


class NaNAfter:
    def __init__(self, denoise, calls):
        self.denoise, self.left = denoise, calls

    def __call__(self, x, t, c):
        self.left -= 1
        out = self.denoise(x, t, c)
        return out * float("nan") if self.left < 0 else out


def test_nan_names_the_call_writes_no_nan_frame_and_keeps_the_checkpoint(gen, reference, tmp_path):
    counting = NaNAfter(gen.bundle.denoise, 10**9)
    list(VideoGenerator(dataclasses.replace(gen.bundle, denoise=counting)).stream(PROMPT, N))
    k = (10**9 - counting.left) * 3 // 4  # NaN from the call 3/4 through the render on
    bad = VideoGenerator(dataclasses.replace(gen.bundle, denoise=NaNAfter(gen.bundle.denoise, k)))
    out = tmp_path / "out.mp4"
    with pytest.raises(NonFiniteError, match=rf"model call {k + 1} of this run \(phase .*serials.*levels.*checkpoint "
                                             r"\(frame \d+\) is kept"):
        bad.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False)
    kept = checkpoint.load(out.parent / "out.mp4.ckpt" / "state.ckpt")["frames"]
    assert 0 < kept < N
    r = gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)  # the weights are the same
    assert r.resumed_from == kept and same_video(out, reference)


@pytest.fixture
def interrupted(gen, tmp_path):
    out = tmp_path / "out.mp4"
    callback, stop = stop_at(6)
    gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, stop=stop, callback=callback)
    return out, out.parent / "out.mp4.ckpt" / "state.ckpt"


def test_a_checkpoint_of_another_model_is_refused(interrupted, tmp_path):
    out, _ = interrupted
    other = load(save_tiny(tmp_path / "other.safetensors", seed=1))
    with pytest.raises(CheckpointError, match="other model weights"):
        other.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)


@pytest.mark.parametrize("change,needle", [
    (dict(steps=12), "another plan config (num_steps: checkpoint 16, now 12)"),
    (dict(seed=5), "other render settings (seed: checkpoint 0, now 5)"),
    (dict(fps=24), "other render settings (fps: checkpoint 12, now 24)"),
])
def test_a_checkpoint_of_another_config_is_refused(gen, interrupted, change, needle):
    out, _ = interrupted
    with pytest.raises(CheckpointError) as err:
        gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True, **change)
    assert needle in str(err.value)


def test_a_checkpoint_of_another_format_version_is_refused(gen, interrupted):
    out, file = interrupted
    data = file.read_bytes()
    file.write_bytes(data.replace(b'"version": 1', b'"version": 99', 1))
    with pytest.raises(CheckpointError, match="format version 99"):
        gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_checkpoint_is_one_clear_error(gen, interrupted, damage):
    out, file = interrupted
    data = file.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "flip": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
               "garbage": b"\x00" * 100, "empty": b""}[damage]
    file.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        gen.render(out, PROMPT, N, checkpoint_every=EVERY, progress=False, resume=True)
