"""The baseline: an official-style eager FIFO / MIGA loop on the same model, configuration and noise as the Engine.

Structure of the official samplers (FIFO-Diffusion `fifo_ddim_sampling`, MIGA `generate_by_miga` / Wan
`text2video.py`), written by us:
  * a dict of per-latent tensors ``[1, C, 1, H, W]`` (no ring buffer), ``torch.cat`` per window;
  * classifier-free guidance as two sequential model calls (cond, then uncond);
  * a per-frame Python solver loop over the written positions: DDIM in the official ``p_sample`` form
    (x0 first, then direction + noise), flow Euler, or multistep UniPC with a per-latent history dict
    (``model_outputs`` / ``last_sample`` / ``this_order``, as MIGA-Wan's ``step_by_different_e``), its
    coefficients computed per step from the sigma grid with the diffusers formulas (no table);
  * the self-reflection judge as written in the official ``adjust_judge`` code.

Two drivers share these methods, so there is one implementation:
  * the official loops of ``tests/plan/official_reference.py`` call ``new`` / ``window`` / ``renoise`` /
    ``check`` / ``select`` / ``output`` directly (tests/runtime/test_engine_exact.py: engine == this loop
    driven by an independent re-derivation of the official schedule);
  * ``run_plan`` consumes the planner's events (``miga_fast.plan.make_plan``), exactly the events the Engine
    executes, so the model work is identical and a benchmark can put the two side by side (bench/fps_memory.py).
    Calls of one ``group`` read the latents as they were before the group (their writes are applied at the
    group end), as the official FIFO loop gets by running its windows from the tail to the head.

Noise comes from the engine's keyed generator (``CounterNoise``, same seed and method), so outputs agree with the
Engine's to fp32 round-off (the engine batches CFG and windows into one call and uses precomputed solver tables).

    python bench/baseline_loop.py --mode miga-stream --latents 12     # compare with the Engine, print max error
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from miga_fast.plan import make_plan
from miga_fast.plan.events import (
    NOISE_NEW,
    NOISE_RENOISE,
    NOISE_STEP,
    NOISE_STEP_REFINE,
    NOISE_STEP_STAGE2,
    Emit,
    ModelCall,
    NewLatent,
    ReflectCheck,
    ReflectSelect,
    Renoise,
    ResetHistory,
)
from miga_fast.runtime.noise import CounterNoise
from miga_fast.solvers.flow import flow_schedule

# Noise stream of each phase when a driver does not give one (the official-reference callbacks).
STREAM = {"fifo": NOISE_STEP, "fill": NOISE_STEP, "stage1": NOISE_STEP, "rollout": NOISE_STEP,
          "stage2": NOISE_STEP_STAGE2, "refine": NOISE_STEP_REFINE}
SOLVERS = ("ddim", "flow_euler", "flow_unipc")


@dataclass
class _History:
    """One latent's UniPC state, as the official per-frame dict: x0 predictions (newest last) with their sampling
    step, the corrected sample of the last step and the order of the last predictor."""

    outputs: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    last_sample: torch.Tensor | None = None
    order: int = 0


class BaselineLoop:
    """Official-style eager executor. ``model(x [1, C, F, H, W], t [1, F], cond [1, S, D]) -> [1, C, F, H, W]``.

    solver: "ddim" (FIFO/MIGA VC2 tables, eta), "flow_euler" or "flow_unipc" (Wan flow matching, ``shift``,
    ``schedule`` as ``miga_fast.solvers.flow.flow_schedule``). base: the clean base clip [f0, C, H, W].
    """

    def __init__(self, model: Callable, base: torch.Tensor, T: int, *, cond: torch.Tensor,
                 uncond: torch.Tensor | None = None, guidance_scale: float = 1.0, solver: str = "ddim",
                 eta: float = 1.0, shift: float = 5.0, schedule: str = "wan", seed: int = 0, threshold: float = 0.001,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 noise_method: str | None = None):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS} (got {solver!r})")
        if guidance_scale != 1.0 and uncond is None:
            raise ValueError("uncond must be given when guidance_scale != 1")
        self.model, self.T, self.solver = model, T, solver
        self.device, self.dtype = torch.device(device), dtype
        self.cdt = torch.promote_types(dtype, torch.float32)  # solver arithmetic, as the engine
        self.base = base.to(self.device, dtype)
        self.cond = cond.to(self.device, dtype)
        self.uncond = None if uncond is None else uncond.to(self.device, dtype)
        self.scale, self.eta, self.threshold = float(guidance_scale), float(eta), threshold
        self.noise = CounterNoise(seed, self.device, noise_method)
        self.shape = tuple(base.shape[1:])
        self.lat: dict[int, torch.Tensor] = {}  # serial -> [1, C, 1, H, W]
        self.hist: dict[int, _History] = {}  # serial -> UniPC history
        self.outputs: list[torch.Tensor] = []
        self.sim_result: list[float] = []
        self.model_calls = 0  # denoiser invocations (CFG counts two)
        self.windows = 0
        self._pending: list[tuple[int, torch.Tensor]] = []  # writes held until the end of a call group
        if solver == "ddim":
            betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
            acp = torch.cumprod(1 - betas, 0)
            self.ts = [int(round(v)) for v in torch.linspace(0, 999, T, dtype=torch.float64).tolist()]
            self.a = [acp[t].item() for t in self.ts]
            self.a_prev = [acp[0].item()] + [acp[t].item() for t in self.ts[:-1]]
            self.t_model = [float(t) for t in self.ts]
        else:
            sigmas, timesteps = flow_schedule(T, shift, schedule)  # sampling order, float32 sigmas
            self.sig = [float(s) for s in sigmas] + [0.0]  # sig[s] of sampling step s; sig[T] = 0
            self.t_model = [float(t) for t in timesteps[::-1]]  # by level

    # ------------------------------------------------------------------ helpers
    def _eps(self, stream, serial, level):
        return self.noise.draw(stream, [serial], [level], self.shape, self.dtype)[0]

    def _add_noise(self, x, eps, level):
        xf, ef = x.to(self.cdt), eps.to(self.cdt)
        if self.solver == "ddim":
            a = self.a[level]
            return (a**0.5 * xf + (1 - a) ** 0.5 * ef).to(self.dtype)
        sigma = self.sig[self.T - 1 - level]
        return ((1 - sigma) * xf + sigma * ef).to(self.dtype)

    def _forget(self, serial):
        self.lat.pop(serial, None)
        self.hist.pop(serial, None)

    # ------------------------------------------------------------------ the official-loop callbacks
    def new(self, serial, level, source, base_index=-1):
        """Latent `serial` at `level`: forward-noised base frame (source "base") or pure noise."""
        eps = self._eps(NOISE_NEW, serial, level)
        x = self._add_noise(self.base[base_index], eps, level) if source == "base" else eps
        self.lat[serial] = x[None, :, None]
        self.hist.pop(serial, None)

    def window(self, phase, serials, levels, writes, *, stream=None, renoised=(), defer=False):
        """One window: torch.cat of the latents, CFG as two calls, a per-frame solver step on `writes`."""
        parts = [self.lat[s] for s in serials]
        for p in renoised:  # read-only context, re-noised on the fly (miga-stream)
            eps = self._eps(NOISE_RENOISE, serials[p], levels[p])
            parts[p] = self._add_noise(parts[p][0, :, 0], eps, levels[p])[None, :, None]
        x = torch.cat(parts, dim=2)
        t = torch.tensor([[self.t_model[lv] for lv in levels]], device=self.device).to(self.dtype)
        e_t = self.model(x, t, self.cond)
        self.model_calls += 1
        if self.scale != 1.0:
            e_u = self.model(x, t, self.uncond)
            self.model_calls += 1
            e_t = e_u + self.scale * (e_t - e_u)
        self.windows += 1
        stream = STREAM[phase] if stream is None else stream
        for p in writes:
            new = self._step(serials[p], x[0, :, p], e_t[0, :, p], levels[p], stream)[None, :, None]
            if defer:
                self._pending.append((serials[p], new))
            else:
                self.lat[serials[p]] = new

    def flush(self):
        """Apply the writes held for a call group."""
        for serial, new in self._pending:
            self.lat[serial] = new
        self._pending = []

    def renoise(self, serials, level):
        for s in serials:
            x = self.lat[s][0, :, 0]
            self.lat[s] = self._add_noise(x, self._eps(NOISE_RENOISE, s, level), level)[None, :, None]
            self.hist.pop(s, None)

    def reset_history(self, serials):
        for s in serials:
            self.hist.pop(s, None)

    def _judge(self, group_a, group_b, score="pooled"):
        """Official `adjust_judge`. VC2 ("pooled"): the [1, C, 1, H, W] latents concatenated on dim 1, then one
        channel mean per group; Wan ("frame"): one channel-mean map per latent, bf16 similarity (autocast)."""
        vecs = []
        for group in (group_a, group_b):
            if score == "pooled":
                feats = torch.cat([self.lat[s].float() for s in group], dim=1).squeeze(2)
                f, d, h, w = feats.shape
                vecs.append(F.normalize(feats.view(f, d, -1).mean(dim=1), p=2, dim=1))
            else:
                feats = torch.cat([self.lat[s].float() for s in group], dim=2)[0]  # [C, M, H, W]
                vecs.append(F.normalize(feats.mean(dim=0).flatten(1), p=2, dim=1).bfloat16())
        sim = (vecs[0] @ vecs[1].T).mean(0).mean(0)
        # Wan keeps the bf16 value: its threshold / best-candidate comparisons happen in bf16 (as the engine's)
        return sim.item() if score == "pooled" else sim

    def check(self, judged, guide, threshold=None, score="pooled"):
        sim = self._judge(judged, guide, score)
        threshold = self.threshold if threshold is None else threshold
        fired = bool(self.sim_result) and bool(self.sim_result[-1] - sim > threshold)
        self.sim_result.append(sim)
        return fired

    def select(self, candidates, guide, score="pooled"):
        best, best_k = -10.0, 0
        for k, cand in enumerate(candidates):
            sim = self._judge(guide, cand, score)
            if bool(sim > best):
                best, best_k = sim, k
        if bool(best > self.sim_result[-1]):
            self.sim_result[-1] = best
            return best_k
        return None

    def output(self, serial):
        self.outputs.append(self.lat[serial][0, :, 0].clone())

    # ------------------------------------------------------------------ per-frame solvers
    def _step(self, serial, x, pred, level, stream):
        """One solver step of one latent x [C, H, W] at `level` with the model output `pred` [C, H, W]."""
        x, pred = x.to(self.cdt), pred.to(self.cdt)
        if self.solver == "ddim":
            out = self._ddim(x, pred, level, serial, stream)
        elif self.solver == "flow_euler":
            s = self.T - 1 - level
            out = x + (self.sig[s + 1] - self.sig[s]) * pred
        else:
            out = self._unipc(serial, x, pred, level)
        return out.to(self.dtype)

    def _ddim(self, x, e_t, level, serial, stream):
        a, a_prev = self.a[level], self.a_prev[level]
        sigma = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        pred_x0 = (x - (1 - a) ** 0.5 * e_t) / a**0.5
        dir_xt = (1.0 - a_prev - sigma**2) ** 0.5 * e_t
        noise = sigma * self._eps(stream, serial, level).to(self.cdt) if self.eta > 0 else 0.0
        return a_prev**0.5 * pred_x0 + dir_xt + noise

    def _lam(self, s):
        """log-SNR of sampling step s (flow: alpha = 1 - sigma); +inf at the terminal sigma 0."""
        sigma = self.sig[s]
        return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)

    def _unipc(self, serial, x, v, level):
        """UniPC-bh2 (predict_x0, flow prediction, solver_order 2, lower_order_final) with this latent's history."""
        s = self.T - 1 - level
        h = self.hist.setdefault(serial, _History())
        m = x - self.sig[s] * v  # x0 prediction from the un-corrected sample
        # corrector, with the order of the previous predictor (a copy without: x may be a view of the caller's)
        x = self._uni_c(h, x, m, s) if h.outputs else x.clone()
        h.outputs = (h.outputs + [m])[-2:]
        h.steps = (h.steps + [s])[-2:]
        order = 1 if len(h.outputs) < 2 or s == self.T - 1 else 2  # warm-up / lower_order_final
        h.last_sample, h.order = x, order
        return self._uni_p(h, x, order, s)

    def _uni_p(self, h, x, order, s):
        m0 = h.outputs[-1]
        sigma_t, sigma_s0 = self.sig[s + 1], self.sig[s]
        if sigma_t == 0:  # terminal step (order 1): h = inf, the update is the x0 prediction
            return m0
        alpha_t = 1 - sigma_t
        lam_s0 = self._lam(s)
        step = self._lam(s + 1) - lam_s0
        hh = -step
        h_phi_1 = math.expm1(hh)
        b_h = math.expm1(hh)  # bh2
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if order == 2:
            rk = (self._lam(h.steps[-2]) - lam_s0) / step
            d1 = (h.outputs[-2] - m0) / rk
            x_t = x_t - alpha_t * b_h * (0.5 * d1)  # rhos_p = [0.5] for order 2
        return x_t

    def _uni_c(self, h, x_this, m_this, s):
        order = h.order
        m0, x = h.outputs[-1], h.last_sample
        s0 = h.steps[-1]
        sigma_t, sigma_s0 = self.sig[s], self.sig[s0]
        alpha_t = 1 - sigma_t
        lam_s0 = self._lam(s0)
        step = self._lam(s) - lam_s0
        rks, d1s = [], []
        for i in range(1, order):
            rk = (self._lam(h.steps[-(i + 1)]) - lam_s0) / step
            rks.append(rk)
            d1s.append((h.outputs[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        hh = -step
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = math.expm1(hh)  # bh2
        R, b, factorial_i = [], [], 1
        for i in range(1, order + 1):
            R.append([r ** (i - 1) for r in rks])
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        rhos_c = [0.5] if order == 1 else np.linalg.solve(np.array(R), np.array(b)).tolist()
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0.0
        return x_t - alpha_t * b_h * (corr + rhos_c[-1] * (m_this - m0))

    # ------------------------------------------------------------------ driving from the planner
    def run_plan(self, cfg, num_latents: int) -> Iterator[torch.Tensor]:
        """Execute the planner's events for `cfg` (a PlanConfig) and yield the kept output latents [C, H, W]."""
        plan = make_plan(cfg, num_latents)
        owner: dict[int, int] = {}  # ring slot -> serial (to read reflection events and free reused slots)
        group, reply = None, None
        while True:
            try:
                ev = plan.send(reply)
            except StopIteration:
                break
            reply = None
            if group is not None and not (isinstance(ev, ModelCall) and ev.group == group):
                self.flush()
                group = None
            if isinstance(ev, ModelCall):
                grouped = ev.group >= 0
                group = ev.group if grouped else None
                self.window(ev.phase, ev.serials, ev.levels, ev.writes, stream=ev.noise_stream,
                            renoised=ev.renoised, defer=grouped)
            elif isinstance(ev, NewLatent):
                old = owner.get(ev.slot)
                if old is not None and old != ev.serial:
                    self._forget(old)  # the planner reuses the slot: the old latent is dead
                owner[ev.slot] = ev.serial
                self.new(ev.serial, ev.level, ev.source, ev.base_index)
            elif isinstance(ev, Renoise):
                self.renoise(ev.serials, ev.level)
            elif isinstance(ev, ResetHistory):
                self.reset_history(ev.serials)
            elif isinstance(ev, Emit):
                if ev.keep:
                    yield self.lat[ev.serial][0, :, 0].clone()
            elif isinstance(ev, ReflectCheck):
                reply = self.check([owner[s] for s in ev.judged_slots], [owner[s] for s in ev.guide_slots],
                                   ev.threshold, ev.score)
            elif isinstance(ev, ReflectSelect):
                reply = self.select([[owner[s] for s in c] for c in ev.candidate_slots],
                                    [owner[s] for s in ev.guide_slots], ev.score)
        self.flush()


def for_engine(engine, model: Callable, base: torch.Tensor, *, cond, uncond=None) -> BaselineLoop:
    """A BaselineLoop with an Engine's solver settings, guidance, seed, noise method, device and dtype."""
    solver = engine.solver
    name = {"DDIMSolver": "ddim", "FlowEulerSolver": "flow_euler", "FlowUniPCSolver": "flow_unipc"}[
        type(solver).__name__]
    return BaselineLoop(model, base, solver.num_steps, cond=cond, uncond=uncond,
                        guidance_scale=engine.guidance_scale, solver=name, eta=getattr(solver, "eta", 0.0),
                        shift=getattr(solver, "shift", 5.0), schedule=getattr(solver, "schedule", "wan"),
                        seed=engine.noise.seed, threshold=engine.cfg.reflect_threshold, device=engine.device,
                        dtype=engine.dtype, noise_method=engine.noise.method)


def main() -> None:
    import argparse
    import sys
    import time

    import miga_fast
    from miga_fast.runtime.factory import make_engine

    parser = argparse.ArgumentParser(description="Run the Engine and the baseline loop on the bundled model and "
                                                 "compare their outputs.")
    parser.add_argument("--mode", default="miga-stream", choices=["fifo", "miga", "miga-stream"])
    parser.add_argument("--latents", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args()
    print("# " + " ".join([sys.executable, *sys.argv]))
    gen = miga_fast.load_default()
    cfg = gen.config(args.mode)
    cond, uncond = gen.encode("a red circle moving left on a striped blue background"), gen.encode("")
    engine = make_engine(gen.bundle, cfg, cond=cond, uncond=uncond, guidance_scale=args.guidance, seed=args.seed)
    with torch.no_grad():
        base = engine.sample_base()
        t0 = time.perf_counter()
        ours = torch.stack(list(engine.run(args.latents, base=base)))
        t1 = time.perf_counter()
        loop = for_engine(engine, gen.model.denoise, base, cond=cond, uncond=uncond)
        ref = torch.stack(list(loop.run_plan(cfg, args.latents)))
        t2 = time.perf_counter()
    err = (ours - ref).abs().max().item()
    print(f"{args.mode}: {args.latents} latents; engine {t1 - t0:.2f} s ({engine.stats.model_calls} calls), "
          f"baseline {t2 - t1:.2f} s ({loop.model_calls} calls); max |engine - baseline| = {err:.3g}")


if __name__ == "__main__":
    main()
