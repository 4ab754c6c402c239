"""miga_fast.diffusers on a tiny random WanPipeline saved with save_pretrained and a tiny VideoCrafter2 checkpoint."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import miga_fast
from tests.models.test_load import VC2_SMALL, WAN_SMALL, build_vc2_checkpoint, build_wan_folder

diffusers = pytest.importorskip("diffusers")
from miga_fast.diffusers import MigaVC2Pipeline, MigaWanPipeline, miga_seed  # noqa: E402

PROMPT = "a red circle moving left"
SMALL = dict(height=16, width=32, **WAN_SMALL)  # tiny frames, a small MIGA-Wan schedule


def g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """(folder, the diffusers WanPipeline, MigaWanPipeline.from_pipe of it)."""
    folder, _ = build_wan_folder(tmp_path_factory.mktemp("wan"))
    pipe = diffusers.WanPipeline.from_pretrained(folder, local_files_only=True)
    return folder, pipe, MigaWanPipeline.from_pipe(pipe)


def reference(folder, frames, seed, **kw):
    """miga_fast.load(folder).stream(...): uint8 [F, H, W, 3]."""
    gen = miga_fast.load(folder, **kw.pop("load", {}))
    return np.stack(list(gen.stream(PROMPT, frames=frames, seed=seed, **kw)))


def test_from_pipe_shares_storage(wan):
    _, pipe, miga = wan
    assert miga.transformer is pipe.transformer and miga.vae is pipe.vae and miga.text_encoder is pipe.text_encoder
    dit = miga.bundle.module  # our WanDiT: the diffusers transformer's own Parameter objects
    theirs = dict(pipe.transformer.named_parameters())
    ours = dict(dit.named_parameters())
    assert ours.keys() == theirs.keys() and all(ours[k] is theirs[k] for k in ours)
    assert {p.data_ptr() for p in dit.parameters()} == {p.data_ptr() for p in pipe.transformer.parameters()}
    assert miga.bundle.codec.inner.vae is pipe.vae and miga.bundle.text.inner.model is pipe.text_encoder


def test_from_pipe_keeps_half_precision(wan):
    folder = wan[0]
    half = diffusers.WanPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, local_files_only=True)
    ptrs = {n: p.data_ptr() for n, p in half.transformer.named_parameters()}
    miga = MigaWanPipeline.from_pipe(half)  # diffusers' own from_pipe would cast every module to float32
    assert miga.transformer.dtype == torch.bfloat16
    assert {n: p.data_ptr() for n, p in miga.transformer.named_parameters()} == ptrs
    assert {p.data_ptr() for p in miga.bundle.module.parameters()} == set(ptrs.values())


def test_frames_equal_the_generator_api(wan):
    folder, _, miga = wan
    loaded = MigaWanPipeline.from_pretrained(folder, local_files_only=True)
    ref = reference(folder, 9, miga_seed(g(3)), size=(16, 32), overrides=WAN_SMALL)
    for pipe in (miga, loaded):
        frames = pipe(PROMPT, num_frames=9, generator=g(3), **SMALL).frames
        assert frames.shape == (1, 9, 16, 32, 3) and frames.dtype == np.float32
        # the stream's uint8 frames are these floats rounded: within half a level
        assert np.abs(frames[0] * 255 - ref).max() <= 0.5 + 1e-3
    a = miga(PROMPT, num_frames=9, generator=g(3), **SMALL).frames
    b = loaded(PROMPT, num_frames=9, generator=g(3), **SMALL).frames
    np.testing.assert_allclose(a, b, atol=1e-6)
    streamed = np.stack(list(miga.stream(PROMPT, num_frames=9, generator=g(3), **SMALL)))
    np.testing.assert_array_equal(streamed, a[0])


def test_output_types_as_wan_pipeline(wan):
    """Every output_type has the type, shape and dtype diffusers' own WanPipeline returns for the same call."""
    _, pipe, miga = wan
    for output_type in ("np", "pt", "pil", "latent"):
        theirs = pipe(PROMPT, num_frames=5, height=16, width=32, num_inference_steps=2, generator=g(0),
                      output_type=output_type).frames
        ours = miga(PROMPT, num_frames=5, generator=g(0), output_type=output_type, **SMALL).frames
        assert type(ours) is type(theirs)
        if output_type == "pil":
            assert len(ours) == len(theirs) == 1 and len(ours[0]) == len(theirs[0]) == 5
            assert [(im.size, im.mode) for im in ours[0]] == [(im.size, im.mode) for im in theirs[0]]
        else:
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    latents = miga(PROMPT, num_frames=9, generator=g(1), output_type="latent", **SMALL).frames
    frames = miga(PROMPT, num_frames=9, generator=g(1), output_type="pt", **SMALL).frames
    assert latents.shape == (1, 4, 3, 2, 4)  # 1 + (9 - 1) / 4 latents of 16 / 8 x 32 / 8
    # the latents are the video's: decoding them whole gives its frames (streaming decode: up to conv rounding)
    decoded = (miga.bundle.codec.decode(latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(decoded, frames, atol=1e-4, rtol=0)
    (tupled,) = miga(PROMPT, num_frames=9, generator=g(1), output_type="pt", return_dict=False, **SMALL)
    assert torch.equal(tupled, frames)


def test_export_to_video(wan, tmp_path):
    import imageio.v3 as iio
    from diffusers.utils import export_to_video

    miga = wan[2]
    frames = miga(PROMPT, num_frames=13, generator=g(0), **SMALL).frames[0]
    path = export_to_video(frames, str(tmp_path / "out.mp4"), fps=16)
    back = iio.imread(path)
    assert back.shape == (13, 16, 32, 3)
    pil = miga(PROMPT, num_frames=13, generator=g(0), output_type="pil", **SMALL).frames[0]
    assert iio.imread(export_to_video(pil, str(tmp_path / "pil.mp4"), fps=16)).shape == (13, 16, 32, 3)


def test_generator_seeding(wan):
    miga = wan[2]
    a = miga(PROMPT, num_frames=5, generator=g(7), **SMALL).frames
    np.testing.assert_array_equal(a, miga(PROMPT, num_frames=5, generator=g(7), **SMALL).frames)
    assert np.abs(a - miga(PROMPT, num_frames=5, generator=g(8), **SMALL).frames).max() > 0.01
    reused = g(7)  # drawing the seed advances it, as diffusers' own sampling would
    first = miga(PROMPT, num_frames=5, generator=reused, **SMALL).frames
    second = miga(PROMPT, num_frames=5, generator=reused, **SMALL).frames
    np.testing.assert_array_equal(first, a)
    assert np.abs(first - second).max() > 0.01
    torch.manual_seed(5)  # no generator: torch's global one
    c = miga(PROMPT, num_frames=5, **SMALL).frames
    torch.manual_seed(5)
    np.testing.assert_array_equal(c, miga(PROMPT, num_frames=5, **SMALL).frames)


def test_batches_prompt_embeds_and_callbacks(wan):
    miga = wan[2]
    single = [miga(p, num_frames=5, generator=g(s), **SMALL).frames[0] for p, s in ((PROMPT, 1), ("a blue square", 2))]
    batch = miga([PROMPT, "a blue square"], num_frames=5, generator=[g(1), g(2)], **SMALL).frames
    assert batch.shape == (2, 5, 16, 32, 3)
    np.testing.assert_array_equal(batch, np.stack(single))
    embeds = miga.bundle.text.encode(PROMPT)
    np.testing.assert_array_equal(miga(prompt_embeds=embeds, num_frames=5, generator=g(1), **SMALL).frames[0],
                                  single[0])
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape), tuple(tensors["prompt_embeds"].shape)))
        if i == 6:
            pipe._interrupt = True
        return tensors

    frames = miga(PROMPT, num_frames=20, generator=g(1), callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **SMALL).frames
    assert frames.shape == (1, 7, 16, 32, 3)  # interrupted after frame 6
    assert seen == [(i, (1, 4, 1, 2, 4), (1, 512, 16)) for i in range(7)]


BAD = [
    (dict(height=20), ValueError, "`height` and `width` have to be divisible by 16"),
    (dict(width=8 * 5), ValueError, "`height` and `width` have to be divisible by 16"),
    (dict(prompt_embeds=torch.zeros(1, 512, 16)), ValueError, "Cannot forward both `prompt`"),
    (dict(output_type="jpg"), ValueError, "`output_type` has to be one of"),
    (dict(num_frames=0), ValueError, "`num_frames` has to be a positive integer"),
    (dict(num_frames=2.5), ValueError, "`num_frames` has to be a positive integer"),
    (dict(mode="zigzag"), ValueError, "`mode` has to be one of"),
    (dict(mode="fifo"), ValueError, "mode must be one of .* for the wan model family"),
    (dict(num_inference_steps=0), ValueError, "`num_inference_steps` has to be a positive integer"),
    (dict(negative_prompt=3), ValueError, "`negative_prompt` has to be of type `str` or `list`"),
    (dict(negative_prompt=["a", "b"]), ValueError, "`negative_prompt` has batch size 2"),
    (dict(generator=[torch.Generator()] * 2), ValueError, "list of generators of length 2"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "`callback_on_step_end_tensor_inputs` has to"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale must be a finite number"),
    (dict(zigzags=3), TypeError, "unexpected keyword argument 'zigzags'"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[next(iter(b[0])) + str(i) for i, b in enumerate(BAD)])
def test_bad_arguments(wan, kwargs, error, match):
    miga = wan[2]
    args = dict(SMALL, prompt=PROMPT, num_frames=5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        miga(**args)


def test_bad_arguments_without_prompt_and_for_stream(wan):
    miga = wan[2]
    with pytest.raises(ValueError, match="Provide either `prompt` or `prompt_embeds`"):
        miga(num_frames=5, **SMALL)
    with pytest.raises(ValueError, match="`output_type` has to be one of .* for stream"):
        miga.stream(PROMPT, num_frames=5, output_type="latent", **SMALL)
    with pytest.raises(ValueError, match="`prompt` has to be one prompt for stream"):
        miga.stream([PROMPT, PROMPT], num_frames=5, **SMALL)
    with pytest.raises(ValueError, match="`denoiser` has to be one of"):
        MigaWanPipeline.from_pipe(wan[1], denoiser="onnx")


def test_diffusers_denoiser_path(wan):
    """denoiser="diffusers": WanTransformer3DModel's own forward with per-token timesteps, same video."""
    _, pipe, miga = wan
    other = MigaWanPipeline.from_pipe(pipe, denoiser="diffusers")
    assert other.bundle.module is pipe.transformer
    np.testing.assert_allclose(other(PROMPT, num_frames=9, generator=g(3), **SMALL).frames,
                               miga(PROMPT, num_frames=9, generator=g(3), **SMALL).frames, atol=1e-4)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from miga_fast.diffusers import MigaWanPipeline

    def peak_kb():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

    pipe = MigaWanPipeline.from_pretrained(sys.argv[1], local_files_only=True)
    peaks = {}
    frames = pipe.stream("a red circle moving left", num_frames=512, height=32, width=32,
                         generator=torch.Generator().manual_seed(0), overrides=json.loads(sys.argv[2]))
    for i, frame in enumerate(frames, 1):
        if i in (64, 512):
            peaks[i] = peak_kb()
    print(json.dumps(peaks))
""")


def test_constant_memory_far_beyond_the_window(wan):
    """512 frames (171 latents; the model window is 6): peak RSS after 512 frames = after 64 (within 1 MB; keeping
    the float frames would add 5.4 MB). Large allocations are mmap'ed (MALLOC_MMAP_THRESHOLD_) so freed memory
    goes back to the system and the peak measures what is live, not the allocator's fragmentation."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="8192", MALLOC_ARENA_MAX="1")
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(wan[0]), json.dumps(WAN_SMALL)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["512"] - peaks["64"] < 1024, peaks


# ----------------------------------------------------------------------------------------------- VideoCrafter2
@pytest.fixture(scope="module")
def vc2(tmp_path_factory):
    return build_vc2_checkpoint(tmp_path_factory.mktemp("vc2"))[0]


def test_vc2_pipeline(vc2):
    from miga_fast.models.vc2_unet import VC2Config

    pipe = MigaVC2Pipeline.from_pretrained(vc2, unet_config=VC2Config.tiny())
    assert pipe.bundle.family == "vc2" and pipe.bundle.module is pipe.unet
    ref = reference(vc2, 5, miga_seed(g(2)), mode="fifo", size=(8, 16), overrides=VC2_SMALL,
                    load=dict(unet_config=VC2Config.tiny()))
    frames = pipe(PROMPT, num_frames=5, height=8, width=16, generator=g(2), mode="fifo", **VC2_SMALL).frames
    assert frames.shape == (1, 5, 8, 16, 3)
    assert np.abs(frames[0] * 255 - ref).max() <= 0.5 + 1e-3
    again = MigaVC2Pipeline.from_pipe(pipe)
    assert again.unet is pipe.unet and again.vae is pipe.vae and again.text_encoder is pipe.text_encoder
    np.testing.assert_array_equal(
        again(PROMPT, num_frames=5, height=8, width=16, generator=g(2), mode="fifo", **VC2_SMALL).frames, frames)
    with pytest.raises(ValueError, match="`height` and `width` have to be divisible by 8"):
        pipe(PROMPT, num_frames=5, height=12, width=16, mode="fifo", **VC2_SMALL)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MigaVC2Pipeline.from_pretrained(vc2.parent / "missing.ckpt")
