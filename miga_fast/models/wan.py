"""Wan2.1 text-to-video DiT with native per-frame timesteps.

Parameter names and shapes are those of diffusers' ``WanTransformer3DModel``, so a diffusers-format
folder loads with ``load_state_dict(strict=True)``. What differs:
  * timesteps are ``[B, F]``: the time embedding and the adaLN vectors are computed once per latent
    frame (``[B, F, 6, dim]``) and broadcast over the frame's tokens (``[B, F, H'*W', dim]``), so no
    per-token modulation tensor exists (diffusers' per-token path builds ``[B, tokens, 6, dim]``);
  * each frame's temporal RoPE position can be given (``frame_positions``), e.g. for context frames;
  * text-to-video only: image conditioning (I2V / FLF2V) and temporal patching are rejected.

Mixed precision follows diffusers: the sinusoid -> time MLP, the ``scale_shift_table``s and the affine
cross-attention norm keep fp32 weights, the norms, adaLN and residual sums run in fp32, and everything
else runs in the weights' dtype.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from ..ops.adaln_modulate import adaln_modulate
from ..ops.attention import attention
from ..ops.gated_residual import gated_residual

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"

# Config keys diffusers accepts for image conditioning, which this model does not implement.
_IMAGE_KEYS = {
    "image_dim": "the CLIP image embedder of Wan I2V/FLF2V",
    "added_kv_proj_dim": "the image K/V projections of Wan I2V/FLF2V cross-attention",
    "pos_embed_seq_len": "the image position embedding of Wan FLF2V",
}


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters, named as the keys of a diffusers ``WanTransformer3DModel`` config.json.

    Defaults are diffusers' (Wan2.1-T2V-14B); Wan2.1-T2V-1.3B has ``num_attention_heads=12, ffn_dim=8960,
    num_layers=30``. ``rope_max_seq_len`` is kept for compatibility only: RoPE angles are computed from
    the positions, so positions are not bounded by it. ``rope_theta`` is ours (Wan fixes it at 1e4): a small
    model with few channels per RoPE axis needs a smaller base, or its slowest frequencies never turn.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    pos_embed_seq_len: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        # diffusers: ``out_channels or in_channels``
        object.__setattr__(self, "out_channels", self.out_channels or self.in_channels)
        for key, what in _IMAGE_KEYS.items():
            if getattr(self, key) is not None:
                raise ValueError(
                    f"WanConfig.{key}={getattr(self, key)!r}: {what} is not supported "
                    f"(text-to-video only; {key} must be null)"
                )
        if len(self.patch_size) != 3 or self.patch_size[0] != 1:
            raise ValueError(
                f"WanConfig.patch_size must be (1, p_h, p_w) (got {self.patch_size}): per-frame timesteps "
                "need one token frame per latent frame"
            )
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"WanConfig.qk_norm must be 'rms_norm_across_heads' (got {self.qk_norm!r})")
        if self.attention_head_dim % 2 or self.freq_dim % 2:
            raise ValueError(
                f"WanConfig.attention_head_dim and freq_dim must be even "
                f"(got {self.attention_head_dim}, {self.freq_dim})"
            )

    @property
    def dim(self) -> int:
        """Width of the token stream, ``num_attention_heads * attention_head_dim``."""
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, values: dict) -> WanConfig:
        """From a config.json dict; ``_``-prefixed bookkeeping keys are ignored, unknown keys rejected."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if not k.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown WanTransformer3DModel config keys {unknown} (known: {sorted(known)})")
        return cls(**values)


def per_token_modulation_bytes(
    batch: int, frames: int, height: int, width: int, patch: tuple[int, int, int], dim: int, dtype_bytes: int
) -> int:
    """Bytes of one ``[B, tokens, 6, dim]`` adaLN tensor, as a per-token timestep path builds it.

    ``frames x height x width`` is the latent size, ``tokens = frames/p_t * height/p_h * width/p_w``.
    """
    tokens = (frames // patch[0]) * (height // patch[1]) * (width // patch[2])
    return batch * tokens * 6 * dim * dtype_bytes


def per_frame_modulation_bytes(
    batch: int, frames: int, height: int, width: int, patch: tuple[int, int, int], dim: int, dtype_bytes: int
) -> int:
    """Bytes of the ``[B, F, 6, dim]`` adaLN tensor of ``WanDiT`` (same arguments; height/width drop out)."""
    return batch * (frames // patch[0]) * 6 * dim * dtype_bytes


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoids ``t [N] -> [N, dim]`` fp32, cosines first, as diffusers ``Timesteps(dim, True, 0)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head rotated by the (frame, row, column) position, Wan's split: 128 -> (44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: Tensor, dim: int, theta: float) -> Tensor:
    """RoPE angles ``positions [N] -> [N, dim // 2]``, in float64 like Wan so cos/sin round identically."""
    # MPS has no float64 (diffusers falls back to float32 there too)
    dtype = torch.float32 if positions.device.type == "mps" else torch.float64
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype, device=positions.device) / dim)
    return positions.to(dtype)[:, None] * inv_freq


# Rows of the RoPE cos/sin tables an exported graph carries: positions 0..1023 on each axis (diffusers' Wan
# precomputes the same 1024, its rope_max_seq_len); export_onnx rejects windows of more frames.
EXPORT_ROPE_POSITIONS = 1024


@functools.cache
def _export_table(dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos, sin ``[EXPORT_ROPE_POSITIONS, dim // 2]`` of positions 0.., computed in float64 as eager does.

    numpy, not torch: under torch.export, torch ops would be traced into the graph (in float64), and a cached
    tensor made while tracing would be a fake one. Equal to eager's tables (tests/export/test_onnx.py).
    """
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(EXPORT_ROPE_POSITIONS, dtype=np.float64)[:, None] * inv_freq
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _exporting() -> bool:
    # torch.compiler.is_exporting appeared in torch 2.6; older versions export the float64 path
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def _axis_cos_sin(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """fp32 ``cos, sin [N, dim // 2]`` of integer ``positions [N]`` on one RoPE axis.

    Eager: of float64 angles (Wan's rounding). While exporting: rows of `_export_table`, the same values, so
    the exported graph has no float64 tensor (TensorRT casts float64 down) and no sin/cos for RoPE.
    """
    if not _exporting():
        angles = _axis_angles(positions, dim, theta)
        return torch.cos(angles).float(), torch.sin(angles).float()
    index = positions.long()
    return tuple(torch.from_numpy(table).to(positions.device).index_select(0, index)
                 for table in _export_table(dim, theta))


def rope_cos_sin(
    frame_positions: Tensor, height: int, width: int, head_dim: int, theta: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """Wan 3D RoPE for tokens in (frame, row, column) order: fp32 ``cos, sin [F*height*width, head_dim//2]``.

    Frame ``f`` sits at temporal position ``frame_positions[f]`` (``[F]`` integers), rows and columns at
    ``0..height-1`` and ``0..width-1``; head channels ``(2i, 2i+1)`` turn by angle ``i``. While exporting,
    positions must be below ``EXPORT_ROPE_POSITIONS``.
    """
    frames, device = frame_positions.shape[0], frame_positions.device
    if _exporting() and max(height, width) > EXPORT_ROPE_POSITIONS:
        raise ValueError(f"an exported RoPE table covers {EXPORT_ROPE_POSITIONS} rows/columns "
                         f"(got height {height}, width {width} tokens)")
    t_dim, h_dim, w_dim = rope_split(head_dim)
    c_t, s_t = _axis_cos_sin(frame_positions, t_dim, theta)
    c_h, s_h = _axis_cos_sin(torch.arange(height, device=device), h_dim, theta)
    c_w, s_w = _axis_cos_sin(torch.arange(width, device=device), w_dim, theta)

    def table(t, h, w):
        # per-axis tables (tiny), broadcast to the token grid
        return torch.cat(
            [
                t[:, None, None].expand(-1, height, width, -1),
                h[None, :, None].expand(frames, -1, width, -1),
                w[None, None].expand(frames, height, -1, -1),
            ],
            dim=-1,
        ).flatten(0, 2)

    return table(c_t, c_h, c_w), table(s_t, s_h, s_w)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x [B, S, H, head_dim]`` by ``cos/sin [S, head_dim // 2]``.

    The rotation runs in fp32; the result has x's dtype.
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)


class _FP32LayerNorm(nn.LayerNorm):
    """Affine LayerNorm computed in fp32; returns fp32 ``[..., dim]``."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class WanAttention(nn.Module):
    """Multi-head attention, q/k RMS-normalised across all heads; self-attention when ``context`` is None."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        # a list so the key is diffusers' "to_out.0" (its slot 1 is a dropout)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        backend: str | None = None,
    ) -> Tensor:
        """``x [B, S, D]``, ``context [B, L, D]``, ``rope = (cos, sin) [S, head_dim//2]`` -> ``[B, S, D]``."""
        kv = x if context is None else context
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.heads, -1))
        k = self.norm_k(self.to_k(kv)).unflatten(-1, (self.heads, -1))
        v = self.to_v(kv).unflatten(-1, (self.heads, -1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend=backend)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class _InProj(nn.Module):
    """First FFN linear, a module of its own only so its parameters are diffusers' ``net.0.proj``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class TanhGELU(nn.Module):
    """``gelu(x, approximate="tanh")``. On CPU float32 as ``x * sigmoid(2 z)``, z = sqrt(2/pi) (x + 0.044715 x^3),
    the same function (0.5 (1 + tanh z) = sigmoid(2 z)) in four in-place passes: ATen's CPU tanh-GELU kernel
    takes 2x as long (bench/denoiser_peak.py profile); elsewhere ATen's kernel."""

    C = 2.0 * math.sqrt(2.0 / math.pi)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return F.gelu(x, approximate="tanh")
        u = x * x
        return u.mul_(0.044715 * self.C).add_(self.C).mul_(x).sigmoid_().mul_(x)


class WanFeedForward(nn.Module):
    """``Linear -> GELU(tanh) -> Linear`` over ``[..., dim]``, parameters named ``net.0.proj`` / ``net.2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(_InProj(dim, hidden), TanhGELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class WanBlock(nn.Module):
    """Self-attention with 3D RoPE -> cross-attention on the text -> FFN, with per-frame adaLN.

    The self-attention and FFN branches are modulated by (shift, scale, gate) vectors of their frame.
    """

    def __init__(self, config: WanConfig):
        super().__init__()
        dim, heads, eps = config.dim, config.num_attention_heads, config.eps
        self.eps = eps
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps)
        self.norm2 = _FP32LayerNorm(dim, eps) if config.cross_attn_norm else nn.Identity()
        self.ffn = WanFeedForward(dim, config.ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        mod: Tensor,
        rope: tuple[Tensor, Tensor],
        backend: str | None = None,
        ops_backend: str | None = None,
    ) -> Tensor:
        """``x [B, F, P, D]``, ``context [B, L, D]``, ``mod [B, F, 6, D]`` (time_proj) -> ``[B, F, P, D]``.

        ``rope = (cos, sin) [F*P, head_dim // 2]``; ``backend``: attention, ``ops_backend``: the fused
        ``adaln_modulate`` / ``gated_residual`` ops (see ``miga_fast.ops.backend``).
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table + mod.float()).unbind(2)
        h = adaln_modulate(x, shift1, scale1, eps=self.eps, dtype=x.dtype, backend=ops_backend)
        x = gated_residual(x, self.attn1(h.flatten(1, 2), rope=rope, backend=backend).view_as(x), gate1,
                           backend=ops_backend)
        h = self.norm2(x.float()).to(x.dtype)
        x = x + self.attn2(h.flatten(1, 2), context, backend=backend).view_as(x)
        h = adaln_modulate(x, shift2, scale2, eps=self.eps, dtype=x.dtype, backend=ops_backend)
        return gated_residual(x, self.ffn(h), gate2, backend=ops_backend)


class _MLP(nn.Module):
    """``linear_1 -> act -> linear_2`` (diffusers' ``TimestepEmbedding`` / ``PixArtAlphaTextProjection``)."""

    def __init__(self, d_in: int, d_out: int, act: nn.Module):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_out)
        self.act = act
        self.linear_2 = nn.Linear(d_out, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class WanConditionEmbedder(nn.Module):
    """Per-frame time embedding and adaLN projection; text projection."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.freq_dim = config.freq_dim
        self.time_embedder = _MLP(config.freq_dim, dim, nn.SiLU())
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = _MLP(config.text_dim, dim, nn.GELU(approximate="tanh"))

    def time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``t [B, F]`` -> ``temb [B, F, D]`` (final norm), ``mod [B, F, 6, D]`` (blocks), weights' dtype."""
        freqs = timestep_embedding(t.flatten(), self.freq_dim)
        temb = self.time_embedder(freqs.to(self.time_embedder.linear_1.weight.dtype))
        temb = temb.to(self.time_proj.weight.dtype)
        mod = self.time_proj(F.silu(temb))
        return temb.unflatten(0, t.shape), mod.unflatten(0, t.shape).unflatten(-1, (6, -1))

    def text(self, context: Tensor) -> Tensor:
        """``context [B, L, text_dim] -> [B, L, D]``."""
        return self.text_embedder(context.to(self.text_embedder.linear_1.weight.dtype))


def _keeps_fp32(name: str) -> bool:
    """Parameters diffusers keeps in fp32 under a half-precision dtype (``_keep_in_fp32_modules``)."""
    return (
        name.startswith("condition_embedder.time_embedder.")
        or name.endswith("scale_shift_table")
        or ".norm2." in name
    )


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a diffusers weights folder: the single file, or every shard of the index."""
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    index = folder / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(
            f"no weights in {folder}: expected {WEIGHTS_NAME}, or {INDEX_NAME} with its shards "
            "(.bin checkpoints are not supported)"
        )
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{index} lists {len(missing)} shard file(s) not in {folder}: {missing[:3]}")
    return [folder / s for s in shards]


def _check_keys(folder: Path, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
    """Raise one ValueError naming missing, unexpected and wrongly shaped weights (a few of each)."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = [
        f"{k}: file {found[k]} vs config {expected[k]}"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != expected[k]
    ]
    problems = [
        f"{len(items)} {what} (e.g. {items[:3]})"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", shapes))
        if items
    ]
    if problems:
        raise ValueError(f"weights in {folder} do not match its config.json: " + "; ".join(problems))


class WanDiT(nn.Module):
    """Wan2.1 DiT: ``x [B, C, F, H, W]`` latents, ``t [B, F]`` timesteps, text ``[B, L, text_dim]`` -> flow.

    Build with ``WanDiT(config)`` (random weights) or ``WanDiT.from_pretrained(folder)``. ``attn_backend``
    forces an attention backend (see ``miga_fast.ops.attention``), ``ops_backend`` one for the fused per-frame
    adaLN ops (``ref`` / ``triton`` / ``cpp``, see ``miga_fast.ops.backend``; default: by device). The fused
    kernels are inference-only, so with autograd enabled (training) the references run.
    """

    def __init__(self, config: WanConfig, *, attn_backend: str | None = None, ops_backend: str | None = None):
        super().__init__()
        self.config = config
        self.attn_backend, self.ops_backend = attn_backend, ops_backend
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, config.patch_size, stride=config.patch_size)
        self.condition_embedder = WanConditionEmbedder(config)
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor, *, frame_positions: Tensor | None = None
    ) -> Tensor:
        """Flow prediction ``[B, C_out, F, H, W]`` in x's dtype.

        Args:
            x: latents ``[B, C_in, F, H, W]``; H and W divisible by the spatial patch.
            t: per-frame timesteps ``[B, F]`` (float, 0..1000).
            context: text embeddings ``[B, L, text_dim]``.
            frame_positions: temporal RoPE position of each frame, integers ``[F]``; default ``arange(F)``.
        """
        cfg = self.config
        b, c, f, h, w = x.shape
        _, ph, pw = cfg.patch_size
        if c != cfg.in_channels or h % ph or w % pw:
            raise ValueError(
                f"x must be [B, {cfg.in_channels}, F, H, W] with H % {ph} == 0 and W % {pw} == 0 "
                f"(got {tuple(x.shape)})"
            )
        if t.shape != (b, f):
            raise ValueError(f"t must be [B, F] = [{b}, {f}] per-frame timesteps (got {tuple(t.shape)})")
        if frame_positions is None:
            frame_positions = torch.arange(f, device=x.device)
        elif frame_positions.shape != (f,):
            raise ValueError(f"frame_positions must be [F] = [{f}] (got {tuple(frame_positions.shape)})")
        hp, wp = h // ph, w // pw
        dtype = self.patch_embedding.weight.dtype

        # [B, D, F, H', W'] -> [B, F, P, D]: tokens grouped by frame so per-frame vectors broadcast over P
        tokens = self.patch_embedding(x.to(dtype)).flatten(3).permute(0, 2, 3, 1).contiguous()
        rope = rope_cos_sin(frame_positions.to(x.device), hp, wp, cfg.attention_head_dim, cfg.rope_theta)
        temb, mod = self.condition_embedder.time(t)
        context = self.condition_embedder.text(context)
        ops = "ref" if torch.is_grad_enabled() else self.ops_backend  # the kernels have no backward
        for block in self.blocks:
            tokens = block(tokens, context, mod, rope, self.attn_backend, ops)

        shift, scale = (self.scale_shift_table + temb.float()[:, :, None]).unbind(2)
        out = self.proj_out(adaln_modulate(tokens, shift, scale, eps=cfg.eps, dtype=dtype, backend=ops))
        # [B, F, P, ph*pw*C] -> [B, C, F, H'*ph, W'*pw]  (channel order of proj_out: ph, pw, C)
        out = out.view(b, f, hp, wp, ph, pw, -1).permute(0, 6, 1, 2, 4, 3, 5)
        return out.reshape(b, -1, f, h, w).to(x.dtype)

    @torch.no_grad()
    def denoise(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Engine contract: ``x [B, C, F, H, W]``, ``t [B, F]``, ``cond`` = text embeddings -> flow."""
        return self(x, t, cond)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        attn_backend: str | None = None,
    ) -> WanDiT:
        """Load a diffusers ``WanTransformer3DModel`` folder (config.json + single or sharded safetensors).

        ``dtype`` (default float32) applies to every weight except those diffusers keeps in fp32;
        ``device`` defaults to the CPU. Returns the model in eval mode.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"Wan model folder {folder} does not exist")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: a diffusers Wan folder has config.json")
        config = WanConfig.from_dict(json.loads(config_path.read_text()))
        files = _weight_files(folder)

        with torch.device("meta"):
            model = cls(config, attn_backend=attn_backend)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {}
        for path in files:
            with safe_open(path, framework="pt") as f:
                found.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        _check_keys(folder, expected, found)

        dtype = dtype or torch.float32
        state = {}
        for path in files:
            # converted tensor by tensor: never a second full copy of the weights in the file's dtype
            with safe_open(path, framework="pt") as f:
                for k in f.keys():
                    state[k] = f.get_tensor(k).to(device or "cpu", torch.float32 if _keeps_fp32(k) else dtype)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()
