"""The Python API and the render command on a tiny random bundled-format model."""

import numpy as np
import pytest
import torch

from miga_fast import ConfigError
from miga_fast.cli import main
from miga_fast.pipeline import load, parse_prompt_schedule
from miga_fast.video import read_frames
from tests.tiny_model import PROMPT, TINY


def test_load_roundtrip_and_stream(weights):
    gen = load(weights)
    frames = list(gen.stream(PROMPT, frames=5, mode="miga-stream", seed=1))
    assert len(frames) == 5 and frames[0].shape == (8, 8, 3) and frames[0].dtype == np.uint8
    again = list(gen.stream(PROMPT, frames=5, mode="miga-stream", seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))


@pytest.mark.parametrize("ext,mode", [(".mp4", "fifo"), (".gif", "miga-stream")])
def test_render_writes_playable_file(weights, tmp_path, ext, mode):
    out = tmp_path / f"video{ext}"
    result = load(weights).render(out, PROMPT, frames=4, mode=mode, progress=False, scale=2)
    assert result.frames == 4 and not result.interrupted
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)


def test_ctrl_c_leaves_a_valid_file(weights, tmp_path):
    out = tmp_path / "partial.mp4"

    def stop_after_three(done):
        if done == 3:
            raise KeyboardInterrupt

    result = load(weights).render(out, PROMPT, frames=20, progress=False, callback=stop_after_three)
    assert result.interrupted and result.frames == 3  # Ctrl-C while producing the 4th frame
    assert len(read_frames(out)) == 3


def test_bad_inputs(weights, tmp_path):
    gen = load(weights)
    with pytest.raises(ConfigError, match=r"does not know: \['violet'\]"):
        list(gen.stream("a violet circle moving left on a striped blue background", frames=2))
    with pytest.raises(ConfigError, match="frames"):
        list(gen.stream(PROMPT, frames=0))
    with pytest.raises(ConfigError, match="does not exist"):
        gen.render(tmp_path / "missing" / "out.mp4", PROMPT, frames=2, progress=False)
    with pytest.raises(ConfigError, match="must end in"):
        gen.render(tmp_path / "out.avi", PROMPT, frames=2, progress=False)
    with pytest.raises(ConfigError, match="mode"):
        list(gen.stream(PROMPT, frames=2, mode="diagonal"))
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("text,match", [("5:a red circle", "frame 0"), ("0:x;0:y", "increasing"), ("zero:x", "FRAME")])
def test_prompt_schedule_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_prompt_schedule(text)


def test_prompt_schedule_render(weights, tmp_path):
    schedule = f"0:{PROMPT};3:a blue square moving up on a plain red background"
    frames = list(load(weights).stream("", frames=6, mode="fifo", prompt_schedule=schedule))
    assert len(frames) == 6


def test_cli_render_and_sheet(weights, tmp_path, capsys):
    out, sheet = tmp_path / "o.gif", tmp_path / "sheet.png"
    assert main(["render", PROMPT, "--frames", "6", "--model", str(weights), "-o", str(out), "--scale", "1"]) == 0
    assert main(["sheet", str(out), str(sheet), "--every", "2"]) == 0
    assert sheet.stat().st_size > 0 and "wrote 6 frames" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["render", "a red blob", "--model", str(weights), "-o", str(out)])
    assert exc.value.code == 2


def test_stream_frames_are_the_engine_latents(weights):
    """The codec refactor keeps the pixel-space path: frame = uint8 of the emitted latent, unchanged."""
    from miga_fast.runtime import Engine
    from miga_fast.solvers import make_solver

    gen = load(weights)
    frames = list(gen.stream(PROMPT, frames=4, mode="fifo", seed=2))
    cfg = gen.config("fifo")
    engine = Engine(gen.model.denoise, make_solver(cfg.solver, cfg.num_steps, shift=TINY.shift), cfg, (3, 8, 8),
                    cond=gen.encode(PROMPT), uncond=gen.encode(""), guidance_scale=4.0, seed=2)
    with torch.no_grad():
        latents = list(engine.run(4))
    for frame, z in zip(frames, latents, strict=True):
        expected = ((z.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(frame, expected)


def test_render_a_wan_folder(tmp_path):
    """miga_fast.load(diffusers Wan folder) -> render: latents decoded by the streaming Wan VAE into a file."""
    import miga_fast
    from tests.models.test_load import WAN_SMALL, build_wan_folder

    folder, _ = build_wan_folder(tmp_path)
    gen = miga_fast.load(folder)
    done = []
    result = gen.render(tmp_path / "wan.gif", PROMPT, frames=7, size=(16, 32), overrides=WAN_SMALL, progress=False,
                        callback=done.append)
    assert result.frames == 7 and done == list(range(1, 8))  # 7 frames = latents 1 + 4 + 2 of the third
    frames = read_frames(tmp_path / "wan.gif")
    assert len(frames) == 7 and frames[0].shape == (16, 32, 3)


def test_a_half_precision_model_keeps_fp32_latents(weights):
    """bf16 weights (this CPU runs bf16 matmuls): the ring's latents stay fp32, as the official samplers keep them,
    and the video stays close to the fp32 model's."""
    gen = load(weights, dtype=torch.bfloat16)
    frames = np.stack(list(gen.stream(PROMPT, frames=8, seed=2))).astype(int)
    (engine,) = gen._engines.values()
    assert engine.ring.latents.dtype == torch.float32 and next(gen.bundle.module.parameters()).dtype == torch.bfloat16
    full = np.stack(list(load(weights).stream(PROMPT, frames=8, seed=2))).astype(int)
    assert np.abs(frames - full).mean() < 8
