"""Packed videos: one engine run of V videos equals V single-video runs given the same per-video noise."""

import pytest
import torch

from miga_fast.models.toy import ToyDenoiser
from miga_fast.plan import preset
from miga_fast.runtime import Engine
from miga_fast.runtime.batch import PackedDenoiser, pack_conditions, unpack_latent
from miga_fast.solvers import make_solver

C, H, W = 4, 5, 6


class VideoNoise:
    """Keyed noise whose packed draw is the concatenation of the single-video draws (videos `ids`)."""

    def __init__(self, ids):
        self.ids = ids

    def draw(self, stream, serials, levels, shape, dtype):
        out = []
        for serial, level in zip(serials, levels, strict=True):
            blocks = []
            for v in self.ids:
                g = torch.Generator().manual_seed(hash((v, stream, serial, level)) % 2**31)
                blocks.append(torch.randn(C, H, W, generator=g))
            out.append(torch.cat(blocks))
        return torch.stack(out).to(dtype)


def conditions(v):
    g = torch.Generator().manual_seed(100 + v)
    return torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)


def render(model, name, ids, n):
    cfg = preset(name, num_steps=12, window=6, zigzag=2, guidance_frames=2, stride=2, end_level=3, refine_level=3) \
        if "miga" in name else preset(name, num_steps=8, window=4)
    conds = [conditions(v) for v in ids]
    engine = Engine(PackedDenoiser(model, len(ids)), make_solver(cfg.solver, cfg.num_steps), cfg,
                    (len(ids) * C, H, W), cond=pack_conditions([c for c, _ in conds]),
                    uncond=pack_conditions([u for _, u in conds]), guidance_scale=3.0)
    engine.noise = VideoNoise(ids)
    with torch.no_grad():
        return torch.stack([unpack_latent(x, len(ids)) for x in engine.run(n)], dim=1)  # [V, N, C, H, W]


@pytest.mark.parametrize("name", ["vc2-fifo", "vc2-miga-stream", "tiny-miga"])
def test_packed_run_equals_single_runs(name):
    model = ToyDenoiser(channels=C, cond_dim=8).eval()
    packed = render(model, name, [0, 1, 2], 8)
    for v in range(3):
        single = render(model, name, [v], 8)[0]
        torch.testing.assert_close(packed[v], single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(packed[0], packed[1])  # different prompts and noise: different videos


def test_packed_denoiser_routes_each_video_its_condition():
    calls = []

    def spy(x, t, cond):
        calls.append((x.shape, t.shape, cond.shape))
        return x * cond.mean((1, 2)).view(-1, 1, 1, 1, 1)

    x = torch.randn(2, 3 * C, 4, H, W)
    cond = pack_conditions([torch.full((1, 5, 8), float(v + 1)) for v in range(3)]).expand(2, -1, -1)
    out = PackedDenoiser(spy, 3)(x, torch.zeros(2, 4), cond)
    assert calls == [(torch.Size([6, C, 4, H, W]), torch.Size([6, 4]), torch.Size([6, 5, 8]))]
    expect = x.view(2, 3, C, 4, H, W) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1, 1)
    torch.testing.assert_close(out, expect.view_as(x))


def test_mismatched_packing_is_a_clear_error():
    with pytest.raises(ValueError, match="multiples of videos=3"):
        PackedDenoiser(lambda x, t, c: x, 3)(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 2), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="share one shape"):
        pack_conditions([torch.zeros(1, 3, 8), torch.zeros(1, 4, 8)])
