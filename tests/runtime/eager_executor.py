"""A straightforward eager executor for the official loops in tests/plan/official_reference.py.

Official style on purpose: a dict of per-latent tensors [1, C, 1, H, W], torch.cat per window, CFG
as two sequential model calls, a per-frame Python DDIM loop in the official p_sample form (x0 first,
then direction + noise), and `adjust_judge` as written in the official code. Noise comes from the
same keyed generator as the engine, so outputs can be compared to fp32 round-off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from miga_fast.plan.events import (
    NOISE_NEW,
    NOISE_RENOISE,
    NOISE_STEP,
    NOISE_STEP_REFINE,
    NOISE_STEP_STAGE2,
)
from miga_fast.runtime.noise import CounterNoise

STREAM = {"fifo": NOISE_STEP, "fill": NOISE_STEP, "stage1": NOISE_STEP, "rollout": NOISE_STEP,
          "stage2": NOISE_STEP_STAGE2, "refine": NOISE_STEP_REFINE}


class EagerDDIMExecutor:
    def __init__(self, model, base, T, *, cond, uncond=None, guidance_scale=1.0, eta=1.0, seed=0,
                 threshold=0.001):
        self.model, self.base, self.T = model, base, T
        self.cond, self.uncond, self.scale, self.eta = cond, uncond, guidance_scale, eta
        self.noise = CounterNoise(seed)
        self.shape = tuple(base.shape[1:])
        self.threshold = threshold
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        acp = torch.cumprod(1 - betas, 0)
        self.ts = [int(round(v)) for v in torch.linspace(0, 999, T, dtype=torch.float64).tolist()]
        self.a = [acp[t].item() for t in self.ts]
        self.a_prev = [acp[0].item()] + [acp[t].item() for t in self.ts[:-1]]
        self.lat: dict[int, torch.Tensor] = {}
        self.outputs: list[torch.Tensor] = []
        self.sim_result: list[float] = []

    def _eps(self, stream, serial, level):
        return self.noise.draw(stream, [serial], [level], self.shape)[0]

    def new(self, serial, level, source, base_index=-1):
        eps = self._eps(NOISE_NEW, serial, level)
        if source == "base":
            a = torch.tensor(self.a[level], dtype=torch.float32)
            x = a.sqrt() * self.base[base_index] + (1 - a).sqrt() * eps
        else:
            x = eps
        self.lat[serial] = x[None, :, None]

    def window(self, phase, serials, levels, writes):
        x = torch.cat([self.lat[s] for s in serials], dim=2)
        t = torch.tensor([[float(self.ts[lv]) for lv in levels]])
        e_t = self.model(x, t, self.cond)
        if self.scale != 1.0:
            e_u = self.model(x, t, self.uncond)
            e_t = e_u + self.scale * (e_t - e_u)
        for p in writes:
            lv = levels[p]
            a, a_prev = self.a[lv], self.a_prev[lv]
            sigma = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
            xi, ei = x[:, :, p], e_t[:, :, p]
            pred_x0 = (xi - (1 - a) ** 0.5 * ei) / a**0.5
            dir_xt = (1.0 - a_prev - sigma**2) ** 0.5 * ei
            noise = sigma * self._eps(STREAM[phase], serials[p], lv)[None] if self.eta > 0 else 0.0
            self.lat[serials[p]] = (a_prev**0.5 * pred_x0 + dir_xt + noise)[:, :, None]

    def renoise(self, serials, level):
        a = self.a[level]
        for s in serials:
            self.lat[s] = a**0.5 * self.lat[s] + (1 - a) ** 0.5 * self._eps(NOISE_RENOISE, s, level)[None, :, None]

    def _judge(self, group_a, group_b):
        vecs = []
        for group in (group_a, group_b):
            feats = torch.cat([self.lat[s] for s in group], dim=1).squeeze(2)
            f, d, h, w = feats.shape
            vecs.append(F.normalize(feats.view(f, d, -1).mean(dim=1), p=2, dim=1))
        return (vecs[0] @ vecs[1].T).mean(0).mean(0).item()

    def check(self, judged, guide):
        sim = self._judge(judged, guide)
        fired = bool(self.sim_result) and self.sim_result[-1] - sim > self.threshold
        self.sim_result.append(sim)
        return fired

    def select(self, candidates, guide):
        best, best_k = -10.0, 0
        for k, cand in enumerate(candidates):
            sim = self._judge(guide, cand)
            if sim > best:
                best, best_k = sim, k
        if best > self.sim_result[-1]:
            self.sim_result[-1] = best
            return best_k
        return None

    def output(self, serial):
        self.outputs.append(self.lat[serial][0, :, 0].clone())
