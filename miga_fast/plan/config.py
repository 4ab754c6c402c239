"""Planner configuration and the named presets.

A `PlanConfig` holds everything the index math needs; nothing here touches tensors. Presets
reproduce the official configurations (FIFO-Diffusion on VideoCrafter2, MIGA on VideoCrafter2
and Wan2.1-1.3B); any field can be overridden and the result is validated as a whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError, require

MODES = ("fifo", "miga", "miga-stream")
FAMILIES = ("vc2", "wan")  # whose official MIGA loops the schedule follows (miga.py / miga_wan.py)
WAN_GUIDANCE_CENTRE = 3  # official Wan far guidance offset: the literal 3 in `3 + j*L`


@dataclass(frozen=True)
class PlanConfig:
    """Schedule parameters. Level index i ∈ [0, num_steps), num_steps-1 the noisiest."""

    mode: str = "miga"
    family: str = "vc2"  # vc2 | wan: official schedule family (wan: miga and miga-stream only)
    num_steps: int = 64  # T: sampler steps
    window: int = 16  # f0: latents per model call (the model's native window)
    solver: str = "ddim"  # ddim | flow_euler | flow_unipc (miga_fast.solvers.SOLVERS)
    # FIFO-Diffusion
    lookahead: bool = True  # 2n half-overlapping windows instead of n disjoint ones
    # MIGA stage 1 (zigzag queue with long-range guidance)
    zigzag: int = 4  # L_zig: latents per level block
    guidance_frames: int = 4  # m_guid: read-only guidance latents prepended to each window
    stride: int = 8  # window stride; also the period of the dynamic window offset
    end_level: int = 10  # stage-1 end level (official `fifo_end_noise_index`)
    # MIGA stage 2 + refine
    refine_level: int = 10  # re-noise level of the refine pass (vc2: 0 disables it; wan: steps it..0)
    # vc2 family: also take the level-0 step after the last stage-2/refine pass. The official VC2 code
    # never does (with its DDIM tables that step is an identity), but a flow-matching solver's level-0
    # step is the one that reaches sigma = 0: without it the output keeps sigma_0 of noise.
    final_step: bool = False
    # Self-reflection
    reflection: bool = False
    judged_level: int = 50  # level of the judged block
    reflect_blocks: int = 3  # r: guide blocks before the judged block
    candidates: int = 5  # K rollouts
    reflect_threshold: float = 0.001  # trigger when previous score - current score > threshold
    # miga-stream
    stream_context: int | None = None  # finished latents prepended to each stage-2 chunk (None: f0//2)

    @property
    def padding(self) -> int:
        """FIFO lookahead padding slots P (f0/2 with lookahead, else 0)."""
        return self.window // 2 if (self.mode == "fifo" and self.lookahead) else 0

    @property
    def stage1_window(self) -> int:
        """Queue latents per stage-1 window (f0 - m)."""
        return self.window - self.guidance_frames

    @property
    def context_len(self) -> int:
        """Read-only finished latents per miga-stream stage-2 window."""
        return self.window // 2 if self.stream_context is None else self.stream_context

    @property
    def stream_chunk(self) -> int:
        """New latents finished per miga-stream stage-2 chunk."""
        return self.window - self.context_len

    def replace(self, **overrides) -> PlanConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            allowed = ", ".join(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"unknown configuration field(s) {unknown}; allowed: {allowed}")
        return dataclasses.replace(self, **overrides).validated()

    def validated(self) -> PlanConfig:
        """Check every field and every cross-field constraint; return self."""
        require(self.mode in MODES, "mode", f"one of {MODES}", self.mode)
        require(self.family in FAMILIES, "family", f"one of {FAMILIES}", self.family)
        require(
            self.family == "vc2" or self.mode != "fifo",
            "mode",
            "'miga' or 'miga-stream' for family 'wan' (no official Wan FIFO-Diffusion schedule)",
            self.mode,
        )
        require(
            self.solver in ("ddim", "flow_euler", "flow_unipc"),
            "solver",
            "one of ('ddim', 'flow_euler', 'flow_unipc')",
            self.solver,
        )
        require(self.window >= 2, "window (f0)", "an integer >= 2", self.window)
        require(self.num_steps >= 2, "num_steps (T)", "an integer >= 2", self.num_steps)
        if self.mode == "fifo":
            require(
                self.num_steps % self.window == 0,
                "num_steps (T)",
                f"a multiple of window f0={self.window} (T = n*f0, n partitions)",
                self.num_steps,
            )
            require(not self.lookahead or self.window % 2 == 0, "window (f0)", "even when lookahead is on", self.window)
            return self
        L, m, f0 = self.zigzag, self.guidance_frames, self.window
        require(L >= 1, "zigzag (L_zig)", "an integer >= 1", L)
        require(f0 % L == 0, "zigzag (L_zig)", f"a divisor of window f0={f0}", L)
        require(0 <= m < f0, "guidance_frames (m)", f"in [0, f0={f0})", m)
        require(1 <= self.stride <= f0 - m, "stride", f"in [1, f0-m={f0 - m}]", self.stride)
        require(
            1 <= self.end_level < self.num_steps - f0 // L - 1,
            "end_level",
            f"in [1, T - f0/L - 1 = {self.num_steps - f0 // L - 1}) so the initial queue starts above it",
            self.end_level,
        )
        require(
            0 <= self.refine_level < self.num_steps, "refine_level", f"in [0, T={self.num_steps})", self.refine_level
        )
        if self.family == "wan":
            # The official literal far-guidance offset 3 reaches start - 3 - (m-1)L >= L - 3: below 0
            # (a silent wrap-around to the queue tail in the official code) when L < 3.
            require(
                m == 0 or L >= WAN_GUIDANCE_CENTRE,
                "zigzag (L_zig)",
                f">= {WAN_GUIDANCE_CENTRE} for family 'wan' with guidance frames (official offset 3 + j*L)",
                L,
            )
            # Wan stage 2 stops labelled at level 0, one step short of clean: the refine pass must finish.
            require(
                self.refine_level >= 1,
                "refine_level",
                f"in [1, T={self.num_steps}) for family 'wan' (its refine pass steps refine_level..0 "
                "and is what reaches sigma 0)",
                self.refine_level,
            )
        if self.reflection:
            r = self.reflect_blocks
            require(r >= 1, "reflect_blocks (r)", "an integer >= 1", r)
            require(self.candidates >= 1, "candidates (K)", "an integer >= 1", self.candidates)
            require(
                self.end_level + r < self.judged_level < self.num_steps - 1,
                "judged_level",
                f"in (end_level + r = {self.end_level + r}, T-1 = {self.num_steps - 1})",
                self.judged_level,
            )
            require(
                (r + 1) * L <= f0,
                "reflect_blocks (r)",
                f"at most f0/L - 1 = {f0 // L - 1} so guide + judged block fit one window",
                r,
            )
            # Wan rollouts partition as if their list already held a window (int() of a negative
            # quotient otherwise gives no or partial windows): guide + one block must fill exactly f0.
            require(
                self.family == "vc2" or (r + 1) * L == f0,
                "reflect_blocks (r)",
                f"exactly f0/L - 1 = {f0 // L - 1} for family 'wan' (official rollouts assume guide + one "
                "block fill one window)",
                r,
            )
        if self.mode == "miga-stream":
            require(1 <= self.context_len < f0, "stream_context", f"in [1, f0={f0})", self.stream_context)
        return self


PRESETS: dict[str, PlanConfig] = {
    "vc2-fifo": PlanConfig(mode="fifo", num_steps=64, window=16, lookahead=True),
    "vc2-fifo-nolookahead": PlanConfig(mode="fifo", num_steps=64, window=16, lookahead=False),
    "vc2-miga": PlanConfig(mode="miga"),
    "vc2-miga-stream": PlanConfig(mode="miga-stream"),
    # The bundled model (pixel-space Wan-style DiT, f0 = 8 frames, flow matching): same schedules at a
    # scale a CPU renders in minutes. MIGA ratios follow VC2: end level ~T/6, refine ~T/6, stride f0/2.
    "tiny-fifo": PlanConfig(mode="fifo", num_steps=16, window=8, solver="flow_unipc"),
    "tiny-miga": PlanConfig(
        mode="miga",
        num_steps=16,
        window=8,
        zigzag=2,
        guidance_frames=2,
        stride=4,
        end_level=3,
        refine_level=3,
        solver="flow_unipc",
        final_step=True,
        judged_level=10,
        reflect_blocks=2,
        candidates=3,
        reflect_threshold=0.01,
    ),
    "tiny-miga-stream": PlanConfig(
        mode="miga-stream",
        num_steps=16,
        window=8,
        zigzag=2,
        guidance_frames=2,
        stride=4,
        end_level=3,
        refine_level=3,
        solver="flow_unipc",
        final_step=True,
        judged_level=10,
        reflect_blocks=2,
        candidates=3,
        reflect_threshold=0.01,
    ),
    # (tiny-vc2-*: the same schedules for the bundled UNet, appended below with DDIM, VideoCrafter2's sampler)
    # Official Wan2.1-1.3B MIGA (configs/wan2.1_1.3B.yaml + text2video.py literals); level i = 53 - s.
    "wan-miga": PlanConfig(
        family="wan",
        mode="miga",
        num_steps=54,
        window=21,
        solver="flow_unipc",
        zigzag=7,
        guidance_frames=4,
        stride=10,
        end_level=10,
        refine_level=9,
        reflection=True,
        judged_level=43,
        reflect_blocks=2,
        candidates=3,
        reflect_threshold=0.01,
    ),
}
# The bundled UNet (arch "vc2": pixel-space VC2UNet, epsilon prediction): the tiny schedules on VideoCrafter2's DDIM
# tables, where the official VC2 code never takes the level-0 step (DDIM's is an identity there).
PRESETS.update({f"tiny-vc2-{name}": dataclasses.replace(PRESETS[f"tiny-{name}"], solver="ddim", final_step=False)
                for name in ("fifo", "miga", "miga-stream")})
PRESETS["wan-miga-stream"] = dataclasses.replace(PRESETS["wan-miga"], mode="miga-stream")


def preset(name: str, **overrides) -> PlanConfig:
    """The named preset with `overrides` applied, validated."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)} (got {name!r})")
    return PRESETS[name].replace(**overrides)


def check_latents(cfg: PlanConfig, num_latents: int) -> None:
    """Validate the number of output latents N for this configuration."""
    require(isinstance(num_latents, int) and num_latents > 0, "latents (N)", "a positive integer", num_latents)
    # Wan: every N >= 1 maps to an official long_iter_nums n >= 4 (miga_wan.official_iterations),
    # and the official code runs for all of those; it only crashes for n <= 3.
    if cfg.mode == "miga" and cfg.family == "vc2":
        require(
            num_latents >= cfg.window,
            "latents (N)",
            f">= window f0={cfg.window} in mode 'miga' (the official offline stage 2 windows "
            "need f0 output latents; use mode 'miga-stream' for shorter videos)",
            num_latents,
        )
