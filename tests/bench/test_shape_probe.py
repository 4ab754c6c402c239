"""bench/shape_probe.py: its sampler lands on the clip an oracle denoises to, and it writes its tables."""

import csv
import random
from types import SimpleNamespace

import torch

from bench import shape_probe
from miga_fast.models.tiny.bundle import VC2_TINY_UNET, TinySpec, TinyVideoModel
from miga_fast.models.tiny.evaluate import pooled
from miga_fast.models.tiny.world import SHAPES, parse_prompt, render
from miga_fast.solvers.ddim import DDIMSolver, vc2_alphas_cumprod


def test_denoising_a_noised_world_clip_with_the_exact_epsilon_gives_back_its_shape():
    prompts = [f"a white {s} drifting on a striped blue background" for s in SHAPES]
    rng = random.Random(1)
    truth = torch.stack([render(parse_prompt(p), 8, 32, start=rng.uniform(0, 100)) for p in prompts])
    target = truth.transpose(1, 2)  # [B, 3, F, H, W]
    acp = torch.tensor(vc2_alphas_cumprod(), dtype=torch.float32)

    def oracle(x, t, cond):  # x [2B, 3, F, H, W], t [2B, F] integer DDPM steps
        a = acp[t.long()].view(t.shape[0], 1, t.shape[1], 1, 1)
        return (x - a.sqrt() * torch.cat([target, target])) / (1 - a).sqrt()

    bundle = SimpleNamespace(denoise=oracle, text=SimpleNamespace(encode=lambda p: torch.zeros(1, 4, 8)))
    solver, g = DDIMSolver(16, eta=1.0), torch.Generator().manual_seed(0)
    a = solver.alphas[9]
    x0 = truth.reshape(-1, 3, 32, 32)
    clips = shape_probe.denoise(bundle, solver, a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g),
                                9, prompts, 4.0, g)
    assert (clips - target).abs().mean() < 0.03
    read = shape_probe.scores(clips, prompts)
    assert all(pooled([s])["shape"] >= 0.9 for s in read), [pooled([s])["shape"] for s in read]


def test_shape_probe_writes_both_tables(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "unet.safetensors"
    unet = {**VC2_TINY_UNET, "model_channels": 8, "num_head_channels": 8, "context_dim": 16, "norm_groups": 8}
    TinyVideoModel(TinySpec.vc2(frame_size=16, text_dim=16, unet=unet)).save(path)
    shape_probe.main(["--weights", str(path), "--seeds", "1", "--out", str(tmp_path), "--name", "t",
                      "--sampler", "1,16,4", "--sampler", "0,4,2", "--levels", "15,3",
                      "--from-sampler", "1,4", "--from-sampler", "0,1"])
    with open(tmp_path / "shape_probe_t.csv") as f:
        rows = list(csv.DictReader(f))
    # two sampler rows; per from-sampler, per level, per shape; per level, two prompt swaps
    assert len(rows) == 2 + 2 * 2 * len(SHAPES) + 2 * 2
    assert all(0 <= float(r["one_object"]) <= 1 for r in rows if not r["probe"].startswith("swap"))
    swaps = [r for r in rows if r["probe"].startswith("swap")]
    assert {r["probe"] for r in swaps} == {"swap shape", "swap colour"}
    assert all(float(r["swap_ratio"]) > 0 for r in swaps)  # random weights: the output moves with the prompt
    md = (tmp_path / "shape_probe_t.md").read_text()
    assert "--from-sampler 0,1" in md  # the command that made it
    assert "(DDIM eta 1, 16 levels, CFG 4;" in md and "(DDIM eta 0, 16 levels, CFG 1;" in md
    assert "## Prompt swap" in md
    assert "| 1 | 16 | 4 |" in md and "| 0 | 4 | 2 |" in md and "| 15 | 999 |" in md and "| 3 | 200 |" in md


def test_a_model_that_draws_each_prompt_exactly_moves_as_much_as_the_truth_under_a_prompt_swap():
    prompts = ["a red square moving left on a plain gray background", "a red circle moving left on a plain gray "
               "background"]
    clips = torch.stack([render(parse_prompt(p), 4, 32, start=3.0) for p in prompts])  # [2, F, 3, H, W]
    acp = torch.tensor(vc2_alphas_cumprod(), dtype=torch.float32)

    def oracle(x, t, cond):  # each prompt's own clip is the x0 it denoises to
        a = acp[t.long()].view(t.shape[0], 1, t.shape[1], 1, 1)
        return (x - a.sqrt() * clips[cond.view(-1).long()].transpose(1, 2)) / (1 - a).sqrt()

    bundle = SimpleNamespace(denoise=oracle, text=SimpleNamespace(
        encode=lambda p: torch.full((1, 1, 1), float(prompts.index(p)))))
    solver = DDIMSolver(16)
    for level in (3, 15):
        ratio = shape_probe.swap_ratio(bundle, solver, clips[:1], clips[1:], prompts[:1], prompts[1:], level,
                                       torch.Generator().manual_seed(0))
        assert abs(ratio - 1) < 1e-3, (level, ratio)
