"""The bundled model's tooling: the training script (deterministic, resumable) and the plain-clip sampler."""

import csv
import dataclasses

import pytest
import torch

from miga_fast.models.tiny import train
from miga_fast.models.tiny.bundle import VC2_TINY_UNET, TinySpec, TinyVideoModel, vc2_table
from miga_fast.models.tiny.clips import clip_grid, sample_plain_clips
from miga_fast.models.tiny.objective import training_noise
from tests.tiny_model import PROMPT, TINY


def _train(workdir, steps):
    train.main(["--workdir", str(workdir), "--steps", str(steps), "--pool", "32", "--batch", "2",
                "--image-batch", "3", "--seed", "5", "--eval-minutes", "0"])
    return TinyVideoModel.load(workdir / "tiny_world.safetensors")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("run_a"), tmp_path_factory.mktemp("run_b")
    return a, _train(a, 2), _train(b, 2)


def test_training_is_deterministic(two_runs):
    _, first, second = two_runs
    assert first.metadata["steps"] == "2" and first.metadata["image_batch"] == "3"
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(first.state_dict()["dit.proj_out.weight"], TinyVideoModel(first.spec).state_dict()[
        "dit.proj_out.weight"]), "training changed nothing"


def test_training_resumes_from_its_checkpoint(two_runs, capsys):
    workdir, _, _ = two_runs
    resumed = _train(workdir, 3)
    assert "resumed from" in capsys.readouterr().out
    assert resumed.metadata["steps"] == "3"
    with open(workdir / "loss.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3]
    assert (workdir / "loss.png").is_file()


def test_plain_clip_sampler_lands_on_the_clip_an_oracle_denoises_to():
    """With the exact velocity of one target clip, sampling must end on it, frame by frame (layout, levels, CFG)."""
    torch.manual_seed(0)
    model = TinyVideoModel(TINY)
    target = torch.rand(2, 3, TINY.window, TINY.frame_size, TINY.frame_size) * 2 - 1  # every frame different

    def oracle(x, t, cond):  # x [2B, 3, F, H, W] (cond + uncond halves), t [2B, F] = sigma * 1000
        sigma = (t / 1000).view(t.shape[0], 1, t.shape[1], 1, 1)
        return (x - torch.cat([target, target])) / sigma

    model.denoise = oracle
    clips = sample_plain_clips(model, [PROMPT, PROMPT], steps=8, seed=3)
    assert clips.shape == target.shape
    # the model is fed int(sigma * 1000) (Wan's truncation), so the oracle's sigma is off by < 1e-3
    assert (clips - target).abs().max() < 0.02


def test_plain_clips_depend_on_the_seed_only():
    model = TinyVideoModel(TINY).eval()
    a, b, c = (sample_plain_clips(model, [PROMPT], steps=2, seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    image = clip_grid(a, scale=2)
    # one row of f0 frames, 2-px separators, every pixel 2 x 2
    assert image.shape == ((TINY.frame_size + 2) * 2, TINY.window * (TINY.frame_size + 2) * 2, 3)
    assert image.dtype.name == "uint8"


def test_rope_theta_travels_with_the_weights(tmp_path):
    small_base = dataclasses.replace(TINY, dit={**TINY.dit, "rope_theta": 20.0})
    TinyVideoModel(small_base).save(tmp_path / "small_base.safetensors")
    assert TinyVideoModel.load(tmp_path / "small_base.safetensors").dit.config.rope_theta == 20.0
    # TINY's spec names no rope_theta, like files written before the field existed: those trained at Wan's 1e4
    TinyVideoModel(TINY).save(tmp_path / "legacy.safetensors")
    assert TinyVideoModel.load(tmp_path / "legacy.safetensors").dit.config.rope_theta == 10000.0


def test_deepen_keeps_the_function_and_adds_identity_blocks():
    torch.manual_seed(0)
    model = TinyVideoModel(dataclasses.replace(TINY, dit={**TINY.dit, "num_layers": 2})).eval()
    for p in model.parameters():  # trained-like weights: nothing zero by chance, gates open
        p.data.normal_(0, 0.2)
    old = [b.state_dict() for b in model.dit.blocks]
    x = torch.randn(2, 3, TINY.window, TINY.frame_size, TINY.frame_size)
    t, cond = torch.rand(2, TINY.window) * 1000, model.text.encode([PROMPT, ""])
    with torch.no_grad():
        before = model.dit(x, t, cond)
        train.deepen(model.dit, 5)
        after = model.dit(x, t, cond)
    assert len(model.dit.blocks) == model.dit.config.num_layers == 5
    assert (after - before).abs().max() < 1e-5
    # blocks 0..4 copy old blocks 0, 0, 0, 1, 1; the repeats (1, 2, 4) start with zero output projections
    for j, src in enumerate([0, 0, 0, 1, 1]):
        state = model.dit.blocks[j].state_dict()
        repeat = j in (1, 2, 4)
        for name, value in state.items():
            is_out = name.startswith(("attn1.to_out", "attn2.to_out", "ffn.net.2"))
            assert torch.equal(value, torch.zeros_like(value) if repeat and is_out else old[src][name]), (j, name)
    with pytest.raises(ValueError, match="layers must be >= the model's 5 blocks"):
        train.deepen(model.dit, 4)


def test_training_from_a_shallower_file_deepens_it(tmp_path, capsys):
    spec = TinySpec()
    shallow = TinyVideoModel(dataclasses.replace(spec, dit={**spec.dit, "num_layers": 1}))
    shallow.save(tmp_path / "shallow.safetensors", extra={"steps": 7})
    train.main(["--workdir", str(tmp_path / "run"), "--init", str(tmp_path / "shallow.safetensors"), "--steps", "8",
                "--pool", "32", "--batch", "1", "--image-batch", "1", "--eval-minutes", "0"])
    assert f"deepened {tmp_path / 'shallow.safetensors'} to {spec.dit['num_layers']} blocks" in capsys.readouterr().out
    trained = TinyVideoModel.load(tmp_path / "run" / "tiny_world.safetensors")
    assert len(trained.dit.blocks) == spec.dit["num_layers"] and trained.metadata["steps"] == "8"


# The UNet architecture (arch "vc2": VC2UNet, epsilon on VideoCrafter2's DDPM, DDIM presets tiny-vc2-*)
UNET = TinySpec.vc2(frame_size=8, text_dim=16, unet={**VC2_TINY_UNET, "context_dim": 16})


@pytest.mark.parametrize("target", ["eps", "v"])
def test_unet_bundle_round_trips_and_renders_with_the_ddim_presets(tmp_path, target):
    from miga_fast.pipeline import load
    from miga_fast.solvers import DDIMSolver

    torch.manual_seed(0)
    spec = dataclasses.replace(UNET, unet_target=target)
    model = TinyVideoModel(spec)
    model.save(tmp_path / "unet.safetensors", extra={"steps": 0})
    loaded = TinyVideoModel.load(tmp_path / "unet.safetensors")
    assert loaded.spec == spec and loaded.spec.prediction == "eps" and not hasattr(loaded, "dit")
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    gen = load(tmp_path / "unet.safetensors")
    assert gen.family == "tiny-vc2" and gen.bundle.size_multiple == 4
    for mode in ("fifo", "miga-stream"):
        frames = list(gen.stream(PROMPT, frames=10, mode=mode, seed=1))
        assert len(frames) == 10 and frames[0].shape == (8, 8, 3) and frames[0].dtype.name == "uint8"
        assert isinstance(gen.engines[-1].solver, DDIMSolver)
    if target == "v":  # the v -> eps conversion compiles whole (the engine's compile mode is fullgraph)
        model.unet.denoise = lambda x, t, cond: torch.tanh(x) * cond.mean()  # a stand-in net: compile the rest
        x, t, cond = torch.randn(2, 3, 8, 8, 8), torch.tensor([[999.0] * 8, [3.0] * 8]), torch.randn(2, 12, 16)
        compiled = torch.compile(model.denoise, fullgraph=True)(x, t, cond)
        assert torch.allclose(compiled, model.denoise(x, t, cond), rtol=1e-5, atol=1e-6)


def test_unet_plain_clip_sampler_lands_on_the_clip_an_oracle_denoises_to():
    """DDIM with the exact epsilon of one target clip ends on it, up to the noise DDPM step 0 keeps."""
    from miga_fast.solvers.ddim import vc2_alphas_cumprod

    torch.manual_seed(0)
    model = TinyVideoModel(UNET)
    target = torch.rand(2, 3, UNET.window, UNET.frame_size, UNET.frame_size) * 2 - 1
    acp = torch.tensor(vc2_alphas_cumprod(), dtype=torch.float32)

    def oracle(x, t, cond):  # x [2B, 3, F, H, W], t [2B, F] integer DDPM steps
        a = acp[t.long()].view(t.shape[0], 1, t.shape[1], 1, 1)
        return (x - a.sqrt() * torch.cat([target, target])) / (1 - a).sqrt()

    model.denoise = oracle
    clips = sample_plain_clips(model, [PROMPT, PROMPT], steps=8, seed=3)
    err = (clips - target).abs()
    assert err.mean() < 0.03 and err.max() < 0.2  # sqrt(1 - acp[0]) = 0.029 of noise is left, as in VideoCrafter2


def test_unet_training_is_resumable_and_keeps_its_architecture(tmp_path, capsys):
    args = ["--arch", "vc2", "--workdir", str(tmp_path), "--pool", "32", "--batch", "1", "--image-batch", "1",
            "--eval-minutes", "0"]
    train.main([*args, "--steps", "2"])
    first = TinyVideoModel.load(tmp_path / "tiny_world.safetensors")
    assert first.spec.arch == "vc2" and first.metadata["steps"] == "2"
    assert not torch.equal(first.unet.out[-1].weight, TinyVideoModel(first.spec).unet.out[-1].weight)
    train.main([*args, "--steps", "3"])
    assert "resumed from" in capsys.readouterr().out
    with open(tmp_path / "loss.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3]
    with pytest.raises(SystemExit, match="is a run of --arch vc2"):
        train.main(["--workdir", str(tmp_path), "--pool", "32", "--steps", "4"])


def test_training_noise_adds_one_offset_per_clip_channel_and_frame():
    x0 = torch.zeros(2, 3, 4, 8, 8)
    torch.manual_seed(1)
    plain = training_noise(x0, 0.0)
    torch.manual_seed(1)
    assert torch.equal(plain, torch.randn_like(x0))
    torch.manual_seed(1)
    offset = training_noise(x0, 0.5) - plain
    constant = offset[..., :1, :1].expand_as(offset)
    assert torch.allclose(offset, constant, atol=1e-6) and offset[..., 0, 0].std() > 0.1  # differs across (n, c, f)


def test_training_logs_its_evaluations_without_changing_what_it_trains(tmp_path, monkeypatch):
    """--eval-minutes scores the EMA weights at the start, on schedule and at the stop into eval.csv / eval.png;
    the evaluation's own randomness does not reach training (same weights as a run without it)."""
    from miga_fast.models.tiny import evaluate

    monkeypatch.setattr(evaluate, "PROMPTS", evaluate.PROMPTS[:1])  # one plain clip, one batch: small for CI
    monkeypatch.setattr(evaluate, "HELDOUT_BATCHES", 1)
    args = ["--arch", "vc2", "--pool", "32", "--batch", "1", "--image-batch", "1", "--steps", "2"]
    train.main([*args, "--workdir", str(tmp_path / "plain"), "--eval-minutes", "0"])
    train.main([*args, "--workdir", str(tmp_path / "scored"), "--eval-minutes", "1e-9"])
    with open(tmp_path / "scored" / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(0 <= float(r["one_object"]) <= 1 and float(r["heldout"]) > 0 for r in rows)
    assert all(-1 <= float(r["noise_colour_r"]) <= 1 for r in rows)
    assert (tmp_path / "scored" / "eval.png").is_file() and not (tmp_path / "plain" / "eval.csv").exists()
    plain, scored = (TinyVideoModel.load(tmp_path / d / "tiny_world.safetensors") for d in ("plain", "scored"))
    for (name, p), q in zip(plain.state_dict().items(), scored.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_noise_colour_correlation_reads_colour_that_follows_the_noise():
    from miga_fast.models.tiny.evaluate import noise_colour_correlation

    torch.manual_seed(0)
    noise = torch.randn(3, 3, 8, 8, 8)
    follows = noise.mean((3, 4), keepdim=True).expand_as(noise) * 10 + 0.01 * torch.randn_like(noise)
    assert noise_colour_correlation(follows, noise) > 0.99
    assert abs(noise_colour_correlation(torch.rand(3, 3, 8, 8, 8), noise)) < 0.3


def test_plain_clip_sampler_returns_the_noise_it_started_from():
    torch.manual_seed(0)
    model = TinyVideoModel(UNET)
    clips = sample_plain_clips(model, [PROMPT], steps=2, seed=4)
    again, noise = sample_plain_clips(model, [PROMPT], steps=2, seed=4, return_noise=True)
    assert torch.equal(clips, again) and noise.shape == clips.shape
    first_draw = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))  # [F, 3, H, W], frame-major
    assert torch.equal(noise[0].transpose(0, 1), first_draw)


def test_unet_norm_groups_are_recorded_and_kept_on_resume(tmp_path, capsys):
    args = ["--arch", "vc2", "--workdir", str(tmp_path), "--pool", "32", "--batch", "1", "--image-batch", "1",
            "--eval-minutes", "0", "--norm-groups", "8"]
    train.main([*args, "--steps", "1"])
    first = TinyVideoModel.load(tmp_path / "tiny_world.safetensors")
    assert first.spec.unet["norm_groups"] == 8 and first.unet.out[0].num_groups == 8
    train.main([*args[:-2], "--steps", "2"])  # resumed without the flag: the checkpoint's architecture
    assert "resumed from" in capsys.readouterr().out
    assert TinyVideoModel.load(tmp_path / "tiny_world.safetensors").unet.out[0].num_groups == 8
    with pytest.raises(SystemExit, match="continues a UNet with norm_groups 8"):
        train.main([*args[:-1], "16", "--steps", "3"])
    with pytest.raises(SystemExit, match="--norm-groups is for --arch vc2"):
        train.main(["--workdir", str(tmp_path / "dit"), "--norm-groups", "8"])


def test_v_target_unet_denoises_to_eps():
    """A UNet that outputs the exact v of a noised clip gives the solver that clip's exact eps, at any level."""
    from miga_fast.models.tiny.objective import noised

    spec = dataclasses.replace(UNET, unet_target="v")
    model = TinyVideoModel(spec)
    x0 = torch.rand(2, 3, spec.window, 8, 8) * 2 - 1
    eps = torch.randn_like(x0)
    xt, t, v = noised(spec, x0, torch.tensor([0.02, 0.9995]), eps, 1.0)
    model.unet.denoise = lambda x, t_, cond: v
    assert torch.allclose(model.denoise(xt, t, None), eps, atol=2e-6)
    assert model.to(torch.bfloat16).alphas_cumprod.dtype == torch.float32  # the table keeps its precision
    assert torch.equal(model.alphas_cumprod, vc2_table())
    model = TinyVideoModel(UNET)  # an eps UNet's denoiser is the UNet itself
    model.unet.denoise = lambda x, t_, cond: v
    assert model.denoise(xt, t, None) is v
    with pytest.raises(ValueError, match="unet_target must be one of"):
        TinySpec(unet_target="v")


def test_training_from_a_file_can_regroup_and_retarget_its_unet(tmp_path, capsys):
    args = ["--arch", "vc2", "--pool", "32", "--batch", "1", "--image-batch", "1", "--eval-minutes", "0"]
    train.main([*args, "--workdir", str(tmp_path / "eps"), "--steps", "1"])
    start = tmp_path / "eps" / "tiny_world.safetensors"
    train.main([*args, "--workdir", str(tmp_path / "v"), "--steps", "2", "--init", str(start),
                "--norm-groups", "8", "--unet-target", "v"])
    assert "initialised from" in capsys.readouterr().out
    moved = TinyVideoModel.load(tmp_path / "v" / "tiny_world.safetensors")
    assert moved.spec.unet_target == "v" and moved.unet.out[0].num_groups == 8 and moved.metadata["steps"] == "2"
    with pytest.raises(SystemExit, match="continues a UNet with unet_target v"):
        train.main([*args, "--workdir", str(tmp_path / "v"), "--steps", "3", "--unet-target", "eps"])
    with pytest.raises(SystemExit, match="--unet-target is for --arch vc2"):
        train.main(["--workdir", str(tmp_path / "dit"), "--unet-target", "v"])


def test_bf16_autocast_training_computes_the_same_loss_to_bf16_precision(tmp_path):
    args = ["--arch", "vc2", "--pool", "32", "--batch", "1", "--image-batch", "1", "--eval-minutes", "0",
            "--steps", "1"]
    losses = {}
    for mode in ("off", "bf16"):
        train.main([*args, "--workdir", str(tmp_path / mode), "--autocast", mode])
        with open(tmp_path / mode / "loss.csv") as f:
            losses[mode] = float(next(csv.DictReader(f))["loss"])
    # same seed, same batch: only the forward's precision differs (bf16 keeps ~3 significant digits)
    assert losses["bf16"] != losses["off"]
    assert abs(losses["bf16"] - losses["off"]) < 0.02 * losses["off"], losses


def test_add_attention_keeps_the_unet_function_and_adds_identity_transformers():
    torch.manual_seed(0)
    small = TinyVideoModel(UNET).eval()
    for p in small.parameters():  # trained-like weights: nothing zero by chance
        p.data.normal_(0, 0.2)
    grown = TinyVideoModel(dataclasses.replace(UNET, unet={**UNET.unet, "attention_resolutions": (2, 4)})).eval()
    train.add_attention(small.unet, grown.unet)
    grown.text.load_state_dict(small.text.state_dict())
    x = torch.randn(2, 3, UNET.window, UNET.frame_size, UNET.frame_size)
    t, cond = torch.randint(0, 1000, (2, UNET.window)), small.text.encode([PROMPT, ""])
    with torch.no_grad():
        assert (grown.unet(x, t, cond) - small.unet(x, t, cond)).abs().max() < 1e-5
    n_new = sum(p.numel() for p in grown.parameters()) - sum(p.numel() for p in small.parameters())
    assert n_new > 0
    # every old tensor is in the grown UNet under its (possibly shifted) name: an upsampler moves past the new
    # transformers, e.g. output_blocks.3.1 -> output_blocks.3.3
    grown_values = list(grown.unet.state_dict().values())
    for name, v in small.unet.state_dict().items():
        assert any(w.shape == v.shape and torch.equal(w, v) for w in grown_values), name
    assert torch.equal(grown.unet.state_dict()["output_blocks.3.3.conv.weight"],
                       small.unet.state_dict()["output_blocks.3.1.conv.weight"])
    with pytest.raises(ValueError, match="superset of its attention_resolutions"):
        train.add_attention(grown.unet, small.unet)


def test_training_from_a_file_can_add_attention_to_its_unet(tmp_path, capsys):
    args = ["--arch", "vc2", "--pool", "32", "--batch", "1", "--image-batch", "1", "--eval-minutes", "0"]
    train.main([*args, "--workdir", str(tmp_path / "small"), "--steps", "1"])
    train.main([*args, "--workdir", str(tmp_path / "grown"), "--steps", "2", "--attention-resolutions", "2,4",
                "--init", str(tmp_path / "small" / "tiny_world.safetensors")])
    assert "grew" in capsys.readouterr().out
    grown = TinyVideoModel.load(tmp_path / "grown" / "tiny_world.safetensors")
    assert grown.unet.config.attention_resolutions == (2, 4) and grown.metadata["steps"] == "2"
    with pytest.raises(SystemExit, match="continues a UNet with attention_resolutions"):
        train.main([*args, "--workdir", str(tmp_path / "grown"), "--steps", "3", "--attention-resolutions", "4"])
    with pytest.raises(SystemExit, match="must be among"):
        train.main([*args, "--workdir", str(tmp_path / "bad"), "--attention-resolutions", "8"])
