"""VideoCrafter2 3D UNet (LVDM ``openaimodel3d.UNetModel``) with native per-frame timesteps.

Parameter names and shapes are those of the original module, so the UNet of a VideoCrafter2
``model.ckpt`` (keys ``model.diffusion_model.*``) loads with ``load_state_dict(strict=True)`` after
stripping that prefix (``vc2_state_dict_from_checkpoint``). What differs from the original:
  * timesteps may be ``[B, F]``: the time embedding is computed per frame (``[B*F, 4*model_channels]``) and
    enters only the ResBlocks' ``emb_layers`` bias, per frame. This is FIFO-Diffusion's modification of
    ``UNetModel.forward`` (its ``is_fifo`` branch: ``[F]`` timesteps with B = 1), generalised to any B;
    ``[B]`` timesteps (the original's) are the uniform special case;
  * the fps default is 8, the value the official FIFO-Diffusion and MIGA VideoCrafter2 samplers pass
    (``--fps 8``), not ``forward``'s own default of 16;
  * text cross-attention projects K/V once per sample (``[B, S, D]``) and lets the queries of all F frames of
    the sample attend to them in one sequence, instead of repeating the context F times; per query this is
    the same softmax;
  * inference only: dropout slots are identities, ``use_checkpoint`` (activation checkpointing) is ignored,
    and random initialisation does not zero the output projections (a random model gives non-trivial
    outputs; real weights come from ``VC2UNet.from_checkpoint``);
  * the options VideoCrafter2 does not use and that change the maths (relative position, causal or
    text temporal attention, image cross-attention, scale-shift norm, ResBlock up/down sampling, 1D/3D
    ``dims``) are rejected by ``VC2Config``.

Layout: as in the original, activations are ``[B*F, C, H, W]`` (frame-major within a sample) for the 2D
convolutions, the per-frame GroupNorms of the ResBlocks and the spatial transformers; the temporal conv
blocks and temporal transformers see the ``[B, C, F, H, W]`` window, so their GroupNorms pool statistics over
all frames of the window (``C/32 x F x H x W``), and temporal self-attention runs over the F frames of each
spatial position. There is no temporal positional encoding (``use_relative_position: false``).

Mixed precision: every GroupNorm and LayerNorm computes in fp32 and returns the input dtype (the original's
``GroupNormSpecific`` does so for the ResBlock and output norms; autocast does it for the others), the
sinusoids are fp32, everything else runs in the weights' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from ..ops.attention import attention
from .wan import timestep_embedding

PREFIX = "model.diffusion_model."  # where LatentDiffusion keeps the UNet in its state dict
# DeepSpeed/Lightning checkpoints (the {'module': ...} case of VideoCrafter's load_model_checkpoint) add this
_WRAPPER_PREFIX = "_forward_module."
DEFAULT_FPS = 8  # the fps the official FIFO-Diffusion and MIGA VideoCrafter2 samplers pass

# UNetModel's signature defaults for the keys whose VideoCrafter2 value differs: a yaml that omits a key
# gets these, as it would from the original (see VC2Config.from_dict).
_CODE_DEFAULTS = {
    "channel_mult": (1, 2, 4, 8),
    "context_dim": None,
    "num_head_channels": -1,
    "use_linear": False,
    "use_checkpoint": False,
    "temporal_conv": False,
    "use_relative_position": True,
    "temporal_length": None,
    "addition_attention": False,
    "fps_cond": False,
}
_REQUIRED = ("in_channels", "out_channels", "model_channels", "num_res_blocks", "attention_resolutions")

# Options of the original that VideoCrafter2 does not use and this port does not implement: value required.
_UNSUPPORTED = {
    "dims": (2, "1D/3D UNets"),
    "use_scale_shift_norm": (False, "FiLM-style scale-shift ResBlocks"),
    "resblock_updown": (False, "ResBlock up/down sampling"),
    "temporal_selfatt_only": (True, "text cross-attention in the temporal transformers"),
    "use_relative_position": (False, "relative temporal position embeddings"),
    "use_causal_attention": (False, "causal temporal attention"),
    "use_image_attention": (False, "image cross-attention (I2V)"),
}


@dataclass(frozen=True)
class VC2Config:
    """Hyper-parameters, named as the ``unet_config.params`` keys of the LVDM yaml (``UNetModel`` arguments).

    Defaults are VideoCrafter2 512 v2.0 (``configs/inference_t2v_512_v2.0.yaml``); keys that yaml does not set
    take ``UNetModel``'s defaults. ``use_checkpoint``, ``dropout`` and ``use_fp16`` are training/precision
    switches of the original and are accepted but ignored (the dtype is the weights'); ``temporal_length`` only
    sized the relative position tables, which are not supported.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = -1
    num_head_channels: int = 64
    transformer_depth: int = 1
    temporal_transformer_depth: int = 1
    context_dim: int | None = 1024  # None (UNetModel's default) is rejected: text conditioning is required
    use_linear: bool = True
    use_checkpoint: bool = True
    temporal_conv: bool = True
    tempspatial_aware: bool = False
    temporal_attention: bool = True
    temporal_selfatt_only: bool = True
    use_relative_position: bool = False
    use_causal_attention: bool = False
    temporal_length: int | None = 16
    addition_attention: bool = True
    fps_cond: bool = True
    use_image_attention: bool = False
    dropout: float = 0.0
    conv_resample: bool = True
    dims: int = 2
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_fp16: bool = False
    # GroupNorm groups (VideoCrafter2: 32). At a width of 32 that is one channel per group, i.e. a per-frame
    # instance norm that removes each channel's mean, so a tiny UNet cannot carry a prompt's colour to its output
    norm_groups: int = 32

    def __post_init__(self):
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        for key, (value, what) in _UNSUPPORTED.items():
            if getattr(self, key) != value:
                raise ValueError(
                    f"VC2Config.{key}={getattr(self, key)!r}: {what} not supported ({key} must be {value!r}, "
                    "as in VideoCrafter2)"
                )
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError(
                f"VC2Config: set exactly one of num_heads and num_head_channels "
                f"(got num_heads={self.num_heads}, num_head_channels={self.num_head_channels})"
            )
        if self.context_dim is None:
            raise ValueError("VC2Config.context_dim must be set: the spatial transformers cross-attend to text")
        if self.addition_attention and self.num_head_channels == -1:
            raise ValueError("VC2Config.addition_attention needs num_head_channels (init_attn uses 8 heads of it)")
        widths = [self.model_channels * m for m in self.channel_mult]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(
                f"VC2Config: model_channels * channel_mult must be multiples of norm_groups={self.norm_groups} "
                f"for the GroupNorm layers (got widths {widths})"
            )
        if not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError(
                f"VC2Config needs a non-empty channel_mult and num_res_blocks >= 1 "
                f"(got {self.channel_mult}, {self.num_res_blocks})"
            )

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding, ``4 * model_channels``."""
        return 4 * self.model_channels

    @property
    def downsample_factor(self) -> int:
        """H and W must be multiples of this, ``2 ** (len(channel_mult) - 1)``."""
        return 2 ** (len(self.channel_mult) - 1)

    def heads(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of the transformers at width ``channels``, as the original derives them."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels

    @classmethod
    def from_dict(cls, values: dict) -> VC2Config:
        """From a yaml ``unet_config.params`` dict; missing keys take ``UNetModel``'s signature defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown UNetModel config keys {unknown} (known: {sorted(known)})")
        missing = [k for k in _REQUIRED if k not in values]
        if missing:
            raise ValueError(f"UNetModel config is missing required keys {missing}")
        return cls(**{**_CODE_DEFAULTS, **values})

    @classmethod
    def tiny(cls, **overrides) -> VC2Config:
        """A tiny random-weights layout with VideoCrafter2's structure, for tests and benches.

        Three levels (widths 32, 64, 64), attention at the first two, none at the last (as VC2's 4th level);
        H and W must be multiples of 4.
        """
        base = dict(
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(2, 1),
            num_head_channels=16,
            context_dim=32,
            temporal_length=4,
        )
        return cls(**{**base, **overrides})


class _GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32, returning the input dtype (LVDM's ``GroupNormSpecific``)."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, returning the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def _pointwise(proj: nn.Module, x: Tensor) -> Tensor:
    """Apply a ``Linear`` or a kernel-1 ``Conv1d/2d`` projection to channels-last tokens ``x [..., C_in]``.

    The original projects with 1x1 convolutions when ``use_linear`` is off (and always in ``init_attn``);
    applied to tokens they are the same matrix product, without the channel-first round trip.
    """
    if isinstance(proj, nn.Linear):
        return proj(x)
    return F.linear(x, proj.weight.flatten(1), proj.bias)


class CrossAttention(nn.Module):
    """Multi-head attention without q/k norms; self-attention when ``context`` is None (LVDM CrossAttention)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.backend: str | None = None  # set by VC2UNet
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        # a list so the key is the original's "to_out.0" (its slot 1 is a dropout)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [N, S, D]``, ``context [N, L, D_ctx]`` -> ``[N, S, D]``."""
        kv = x if context is None else context
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.to_k(kv).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(kv).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        out = attention(q, k, v, backend=self.backend)  # scale dim_head ** -0.5, as the original
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class _GEGLU(nn.Module):
    """``proj`` to twice the width, then ``a * gelu(b)`` (exact GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward of width ``4 * dim``, parameters ``net.0.proj`` / ``net.2`` (slot 1: dropout)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(_GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention -> attention on ``context`` (self-attention again if none) -> GEGLU FFN, pre-LayerNorm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = _LayerNorm(dim)
        self.norm2 = _LayerNorm(dim)
        self.norm3 = _LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [N, S, D]``; ``context [B, L, D_ctx]`` with ``N = B * F`` (F frames per sample) -> ``[N, S, D]``.

        With a context, the F frames' queries of one sample attend to its context in one sequence
        ``[B, F*S, D]``: per query the same softmax as the original's context repeated F times.
        """
        x = x + self.attn1(self.norm1(x))
        h = self.norm2(x)
        if context is None:
            x = x + self.attn2(h)
        else:
            x = x + self.attn2(h.reshape(context.shape[0], -1, h.shape[-1]), context).view_as(x)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the ``H*W`` tokens of each frame, with text cross-attention."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None, linear: bool,
                 groups: int = 32):
        super().__init__()
        inner = heads * dim_head
        self.norm = _GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        """``h [B*F, C, H, W]``, ``context [B, L, D_ctx]`` -> ``[B*F, C, H, W]``."""
        n, c, hgt, wid = h.shape
        x = _pointwise(self.proj_in, self.norm(h).flatten(2).transpose(1, 2))  # [B*F, H*W, inner]
        for block in self.transformer_blocks:
            x = block(x, context)
        x = _pointwise(self.proj_out, x)
        return h + x.transpose(1, 2).reshape(n, c, hgt, wid)


class TemporalTransformer(nn.Module):
    """Self-attention over the F frames of each spatial position (only_self_att: both attentions are self)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, linear: bool, groups: int = 32):
        super().__init__()
        inner = heads * dim_head
        self.norm = _GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, None) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv1d(inner, channels, 1)

    def forward(self, h: Tensor, batch: int) -> Tensor:
        """``h [B*F, C, H, W]`` (``batch`` = B) -> ``[B*F, C, H, W]``."""
        n, c, hgt, wid = h.shape
        frames = n // batch
        window = h.view(batch, frames, c, hgt, wid).transpose(1, 2)  # [B, C, F, H, W]
        # GroupNorm of the 5D window: statistics over every frame (C/32 x F x H x W), as the original
        x = self.norm(window).permute(0, 3, 4, 2, 1).reshape(batch * hgt * wid, frames, c)
        x = _pointwise(self.proj_in, x)  # [B*H*W, F, inner]
        for block in self.transformer_blocks:
            x = block(x)
        x = _pointwise(self.proj_out, x)
        return h + x.view(batch, hgt, wid, frames, c).permute(0, 3, 4, 1, 2).reshape(n, c, hgt, wid)


class TemporalConvBlock(nn.Module):
    """Four GroupNorm -> SiLU -> Conv3d stages along time (kernel 3x1x1), residual (ModelScope's block).

    The first two kernels are 3x3x3 with ``tempspatial_aware``. Parameters ``conv1.{0,2}``,
    ``conv{2,3,4}.{0,3}`` (slot 2 of conv2..4 is a dropout).
    """

    def __init__(self, channels: int, spatial_aware: bool = False, groups: int = 32):
        super().__init__()
        kernel, pad = ((3, 3, 3), (1, 1, 1)) if spatial_aware else ((3, 1, 1), (1, 0, 0))

        def stage(k, p, dropout_slot):
            middle = [nn.Identity()] if dropout_slot else []
            return nn.Sequential(
                _GroupNorm(groups, channels), nn.SiLU(), *middle, nn.Conv3d(channels, channels, k, padding=p)
            )

        self.conv1 = stage(kernel, pad, False)
        self.conv2 = stage(kernel, pad, True)
        self.conv3 = stage((3, 1, 1), (1, 0, 0), True)
        self.conv4 = stage((3, 1, 1), (1, 0, 0), True)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, F, H, W]`` -> ``[B, C, F, H, W]``; frames outside the window count as zeros."""
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + per-frame time-embedding bias, GroupNorm-SiLU-conv, skip; then the temporal convs.

    The name ``temopral_conv`` (sic) is the original's parameter name.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, temporal_conv: bool, spatial_aware: bool,
                 groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(
            _GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            _GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Identity(),  # the original's dropout slot
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, spatial_aware, groups)

    def forward(self, h: Tensor, emb: Tensor, batch: int) -> Tensor:
        """``h [B*F, C, H, W]``, ``emb [B*F, E]`` (one row per frame; ``batch`` = B) -> ``[B*F, C_out, H, W]``."""
        y = self.in_layers(h)
        # per-frame timestep: one bias vector per frame, broadcast over its pixels
        y = y + self.emb_layers(emb).to(y.dtype)[:, :, None, None]
        y = self.skip_connection(h) + self.out_layers(y)
        if hasattr(self, "temopral_conv"):
            n, c, hgt, wid = y.shape
            window = y.view(batch, n // batch, c, hgt, wid).transpose(1, 2)  # [B, C, F, H, W]
            y = self.temopral_conv(window).transpose(1, 2).reshape(n, c, hgt, wid)
        return y


class Downsample(nn.Module):
    """Stride-2 3x3 conv (``op``), or 2x2 average pooling without ``conv_resample``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, h: Tensor) -> Tensor:
        return self.op(h)


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv (``conv``) with ``conv_resample``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv(h) if hasattr(self, "conv") else h


class TimestepEmbedSequential(nn.ModuleList):
    """One UNet stage: its layers in order, each given what it needs (the original's container of that name)."""

    def forward(self, h: Tensor, emb: Tensor, context: Tensor, batch: int) -> Tensor:
        """``h [B*F, C, H, W]``, ``emb [B*F, E]``, ``context [B, L, D_ctx]`` -> ``[B*F, C', H', W']``."""
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, batch)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, TemporalTransformer):
                h = layer(h, batch)
            else:
                h = layer(h)
        return h


def _timestep_sinusoids(t: Tensor, dim: int) -> Tensor:
    """LVDM ``timestep_embedding(t [N], dim)`` -> fp32 ``[N, dim]`` (cosines first; zero-padded if dim is odd)."""
    emb = timestep_embedding(t, dim - dim % 2)
    return F.pad(emb, (0, dim % 2))


class VC2UNet(nn.Module):
    """VideoCrafter2 UNet: ``x [B, C, F, H, W]`` latents, ``t [B, F]`` timesteps, text ``[B, S, D]`` -> eps.

    Build with ``VC2UNet(config)`` (random weights) or ``VC2UNet.from_checkpoint(path)``. ``fps`` is the
    default frame-rate condition (``fps_cond``); ``attn_backend`` forces an attention backend (see
    ``miga_fast.ops.attention``).
    """

    def __init__(self, config: VC2Config | None = None, *, fps: int = DEFAULT_FPS, attn_backend: str | None = None):
        super().__init__()
        cfg = self.config = config or VC2Config()
        self.fps = fps
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.fps_cond:
            self.fps_embedding = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def resblock(ch_in, ch_out):
            return ResBlock(ch_in, emb_dim, ch_out, cfg.temporal_conv, cfg.tempspatial_aware, cfg.norm_groups)

        def attention_layers(ch):
            heads, dim_head = cfg.heads(ch)
            layers = [SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim, cfg.use_linear,
                                         cfg.norm_groups)]
            if cfg.temporal_attention:
                depth = cfg.temporal_transformer_depth
                layers.append(TemporalTransformer(ch, heads, dim_head, depth, cfg.use_linear, cfg.norm_groups))
            return layers

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        if cfg.addition_attention:
            # the original builds it with 8 heads of num_head_channels, transformer_depth, and 1x1-conv projections
            self.init_attn = TimestepEmbedSequential(
                [TemporalTransformer(mc, 8, cfg.num_head_channels, cfg.transformer_depth, linear=False,
                                     groups=cfg.norm_groups)]
            )
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention_layers(ch)
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch, cfg.conv_resample)]))
                skip_channels.append(ch)
                ds *= 2

        # attention in the middle block whatever attention_resolutions says, as the original
        self.middle_block = TimestepEmbedSequential([resblock(ch, ch), *attention_layers(ch), resblock(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention_layers(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(layers))

        self.out = nn.Sequential(_GroupNorm(cfg.norm_groups, ch), nn.SiLU(),
                                 nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        self.attn_backend = attn_backend

    @property
    def attn_backend(self) -> str | None:
        """Attention backend forced on every attention layer (None: automatic choice)."""
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, backend: str | None) -> None:
        self._attn_backend = backend
        for module in self.modules():
            if isinstance(module, CrossAttention):
                module.backend = backend

    def time_embedding(self, t: Tensor, fps: int | Tensor, batch: int, frames: int) -> Tensor:
        """Per-frame embedding ``[B*F, 4*model_channels]`` (frame-major per sample) in the weights' dtype.

        ``t [B, F]`` or ``[B]`` timesteps; ``fps`` an int or ``[B]``. The fps embedding is per sample and is
        added to every frame's time embedding (FIFO-Diffusion's ``emb += fps_emb`` broadcast).
        """
        dtype, mc = self.time_embed[0].weight.dtype, self.config.model_channels
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        emb = self.time_embed(_timestep_sinusoids(t.reshape(-1), mc).to(dtype))
        if self.config.fps_cond:
            if not isinstance(fps, Tensor):
                fps = torch.full((batch,), fps, device=t.device)
            fps_emb = self.fps_embedding(_timestep_sinusoids(fps, mc).to(dtype))  # [B, E]
            emb = (emb.view(batch, frames, -1) + fps_emb[:, None]).view(batch * frames, -1)
        return emb

    def forward(self, x: Tensor, t: Tensor, context: Tensor, fps: int | Tensor | None = None) -> Tensor:
        """Noise prediction ``[B, C_out, F, H, W]`` in x's dtype.

        Args:
            x: latents ``[B, C_in, F, H, W]``; H and W multiples of ``config.downsample_factor``.
            t: per-frame timesteps ``[B, F]`` (float or int, 0..999), or ``[B]`` (one per sample, the original).
            context: text embeddings ``[B, S, context_dim]``.
            fps: frame-rate condition, int or ``[B]``; default ``self.fps`` (8). Ignored without ``fps_cond``.
        """
        cfg = self.config
        if x.dim() != 5:
            raise ValueError(f"x must be [B, C, F, H, W] (got {tuple(x.shape)})")
        b, c, f, hgt, wid = x.shape
        k = cfg.downsample_factor
        if c != cfg.in_channels or hgt % k or wid % k:
            raise ValueError(
                f"x must be [B, {cfg.in_channels}, F, H, W] with H and W multiples of {k} (got {tuple(x.shape)})"
            )
        if t.shape not in ((b, f), (b,)):
            raise ValueError(f"t must be [B, F] = [{b}, {f}] per-frame timesteps, or [B] (got {tuple(t.shape)})")
        if context.dim() != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must be [B, S, {cfg.context_dim}] with B = {b} (got {tuple(context.shape)})")
        fps = self.fps if fps is None else fps
        if isinstance(fps, Tensor) and fps.shape != (b,):
            raise ValueError(f"fps must be an int or a [B] = [{b}] tensor (got shape {tuple(fps.shape)})")

        dtype = self.input_blocks[0][0].weight.dtype
        emb = self.time_embedding(t, fps, b, f)
        context = context.to(dtype)
        # [B, C, F, H, W] -> [B*F, C, H, W]: 2D layers see frames as batch rows
        h = x.to(dtype).transpose(1, 2).reshape(b * f, c, hgt, wid)
        skips = []
        for i, stage in enumerate(self.input_blocks):
            h = stage(h, emb, context, b)
            if i == 0 and cfg.addition_attention:
                h = self.init_attn(h, emb, context, b)
            skips.append(h)
        h = self.middle_block(h, emb, context, b)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, b)
        y = self.out(h)
        return y.view(b, f, -1, hgt, wid).transpose(1, 2).contiguous().to(x.dtype)

    @torch.no_grad()
    def denoise(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Engine contract: ``x [B, C, F, H, W]``, ``t [B, F]``, ``cond`` = text ``[B, S, D]`` -> eps (``self.fps``)."""
        return self(x, t, cond)

    @classmethod
    def from_checkpoint(
        cls,
        path_or_state: str | Path | dict,
        config: VC2Config | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        device: torch.device | str | None = None,
        fps: int = DEFAULT_FPS,
        attn_backend: str | None = None,
    ) -> VC2UNet:
        """Load the UNet of an LVDM checkpoint: a ``model.ckpt``/``.pt``/``.pth`` (``torch.load``, weights only,
        memory-mapped), a ``.safetensors`` with the same keys, or an already loaded dict.

        The checkpoint's ``model.diffusion_model.*`` tensors must match ``VC2UNet(config)`` exactly (default
        config: VideoCrafter2 512 v2.0); other keys (VAE, text encoder, schedule buffers) are ignored.
        Floating-point weights are converted to ``dtype`` on ``device`` (default CPU). Returns the model in
        eval mode.
        """
        config = config or VC2Config()
        source = "state dict" if isinstance(path_or_state, dict) else str(path_or_state)
        if isinstance(path_or_state, dict):
            state = vc2_state_dict_from_checkpoint(path_or_state)
        else:
            state = vc2_state_dict_from_checkpoint(_read_checkpoint(Path(path_or_state)))

        with torch.device("meta"):
            model = cls(config, fps=fps, attn_backend=attn_backend)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_keys(source, expected, {k: tuple(v.shape) for k, v in state.items()})
        device = device or "cpu"
        state = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


def vc2_state_dict_from_checkpoint(state: dict) -> dict:
    """The UNet tensors of an LVDM checkpoint dict, keys without the ``model.diffusion_model.`` prefix.

    ``state`` is the checkpoint (``{'state_dict': {...}}``, DeepSpeed's ``{'module': {...}}`` whose keys start
    with ``_forward_module.``) or its flat state dict. Raises ValueError when no key has the prefix.
    """
    for wrapper in ("state_dict", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    unet = {}
    for key, value in state.items():
        key = key.removeprefix(_WRAPPER_PREFIX)
        if key.startswith(PREFIX):
            unet[key[len(PREFIX) :]] = value
    if not unet:
        sample = sorted(state)[:5]
        raise ValueError(
            f"no UNet weights in the checkpoint: expected keys starting with {PREFIX!r} (LVDM LatentDiffusion "
            f"layout, optionally under 'state_dict'); found {len(state)} keys, e.g. {sample}"
        )
    return unet


def _read_checkpoint(path: Path) -> dict:
    """The flat (or ``{'state_dict': ...}``) tensor dict of a torch or safetensors checkpoint file."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            # read only the UNet tensors (the VAE and text encoder may share the file)
            keys = [k for k in f.keys() if k.removeprefix(_WRAPPER_PREFIX).startswith(PREFIX)] or list(f.keys())
            return {k: f.get_tensor(k) for k in keys}
    if path.suffix not in (".ckpt", ".pt", ".pth"):
        raise ValueError(f"unsupported checkpoint file {path}: expected .ckpt, .pt, .pth or .safetensors")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        # legacy (pre-zipfile) torch.save format: cannot be memory-mapped, read it whole
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if type(err).__name__ != "UnpicklingError":
            raise
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers, which a weights-only load refuses: "
            "if you trust the file, load it once with weights_only=False and re-save its 'state_dict' alone "
            "(torch.save({'state_dict': ckpt['state_dict']}, path))"
        ) from err


def _check_keys(source: str, expected: dict[str, tuple], found: dict[str, tuple], limit: int = 10) -> None:
    """Raise one ValueError naming missing, unexpected and wrongly shaped UNet weights (up to ``limit`` each)."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = [
        f"{k}: checkpoint {found[k]} vs model {expected[k]}"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != expected[k]
    ]
    problems = [
        f"{len(items)} {what}: {items[:limit]}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", shapes))
        if items
    ]
    if problems:
        raise ValueError(
            f"UNet weights of {source} (keys after {PREFIX!r}) do not match VC2UNet(config) "
            f"({len(expected)} expected, {len(found)} found; is the VC2Config right?): " + "; ".join(problems)
        )
