"""Test oracle: a literal re-derivation of LVDM's ``openaimodel3d.UNetModel`` forward (VideoCrafter2).

The original cannot be imported here (it needs einops, omegaconf and the LVDM tree), so this module rewrites
it in its own structure: the same classes, constructor arguments, container nesting and parameter names,
the same order of operations, ``rearrange`` written out as permute/reshape, attention as explicit
``einsum -> softmax -> einsum`` on ``(b h) n d`` tensors, context repeated per frame, temporal layers
entered through ``b c t h w``. It shares no code with ``miga_fast``. Only the inference path of the
VideoCrafter2 options is kept (no relative position, causal mask, image cross-attention, adapters,
scale-shift norm or ResBlock up/down), and ``zero_module`` initialisations are left out (weights are
always loaded).

``forward`` includes FIFO-Diffusion's modification: when ``timesteps`` has more entries than ``x`` has
samples (``is_fifo``), they are per-frame (``[b*t]``, frame-major per sample) and the time embedding is not
repeated over frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(
        device=timesteps.device
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNormSpecific(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels, num_groups=32):
    return GroupNormSpecific(num_groups, channels)


# ---------------------------------------------------------------- lvdm/modules/attention.py


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None):
        h = self.heads
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(context)

        def split(t):  # 'b n (h d) -> (b h) n d'
            b, n, _ = t.shape
            return t.reshape(b, n, h, -1).permute(0, 2, 1, 3).reshape(b * h, n, -1)

        q, k, v = split(q), split(k), split(v)
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        sim = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", sim, v)
        bh, n, d = out.shape  # '(b h) n d -> b n (h d)'
        out = out.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        project_in = nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()) if not glu else GEGLU(dim, inner_dim)
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, gated_ff=True, disable_self_attn=False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(
            query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout,
            context_dim=context_dim if self.disable_self_attn else None,
        )  # fmt: skip
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(
            query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None, use_linear=False):
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        if not use_linear:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        else:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim)
                for d in range(depth)
            ]
        )
        if not use_linear:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.proj_out = nn.Linear(inner_dim, in_channels)
        self.use_linear = use_linear

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()  # 'b c h w -> b (h w) c'
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # 'b (h w) c -> b c h w'
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TemporalTransformer(nn.Module):
    """only_self_att=True, no relative position, no causal mask (VideoCrafter2's settings)."""

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None, use_linear=False):
        super().__init__()
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        if not use_linear:
            self.proj_in = nn.Conv1d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        else:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        context_dim = None  # only_self_att
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim)
                for d in range(depth)
            ]
        )
        if not use_linear:
            self.proj_out = nn.Conv1d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.proj_out = nn.Linear(inner_dim, in_channels)
        self.use_linear = use_linear

    def forward(self, x, context=None):
        b, c, t, h, w = x.shape
        x_in = x
        x = self.norm(x)
        x = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t).contiguous()  # 'b c t h w -> (b h w) c t'
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 1).contiguous()  # 'bhw c t -> bhw t c'
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        x = x.reshape(b, h * w, t, -1).contiguous()  # '(b hw) t c -> b hw t c'
        if self.use_linear:
            x = self.proj_out(x)
            x = x.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2).contiguous()  # 'b (h w) t c -> b c t h w'
        else:
            x = x.reshape(b * h * w, t, -1).permute(0, 2, 1).contiguous()  # 'b hw t c -> (b hw) c t'
            x = self.proj_out(x)
            x = x.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2).contiguous()  # '(b h w) c t -> b c t h w'
        return x + x_in


# ---------------------------------------------------------------- lvdm/modules/networks/openaimodel3d.py


def bt_to_bcthw(x, b):  # '(b t) c h w -> b c t h w'
    bt, c, h, w = x.shape
    return x.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)


def bcthw_to_bt(x):  # 'b c t h w -> (b t) c h w'
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


class TimestepBlock(nn.Module):
    pass


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb, context=None, batch_size=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = bt_to_bcthw(x, batch_size)
                x = layer(x, context)
                x = bcthw_to_bt(x)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, channels, use_conv, out_channels=None, padding=1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(self.channels, self.out_channels, 3, stride=2, padding=padding)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels, use_conv, out_channels=None, padding=1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(self.channels, self.out_channels, 3, padding=padding)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class TemporalConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels=None, dropout=0.0, spatial_aware=False):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        kernel_shape = (3, 1, 1) if not spatial_aware else (3, 3, 3)
        padding_shape = (1, 0, 0) if not spatial_aware else (1, 1, 1)
        self.conv1 = nn.Sequential(
            nn.GroupNorm(32, in_channels), nn.SiLU(),
            nn.Conv3d(in_channels, out_channels, kernel_shape, padding=padding_shape))  # fmt: skip
        self.conv2 = nn.Sequential(
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv3d(out_channels, in_channels, kernel_shape, padding=padding_shape))  # fmt: skip
        self.conv3 = nn.Sequential(
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv3d(out_channels, in_channels, (3, 1, 1), padding=(1, 0, 0)))  # fmt: skip
        self.conv4 = nn.Sequential(
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv3d(out_channels, in_channels, (3, 1, 1), padding=(1, 0, 0)))  # fmt: skip

    def forward(self, x):
        identity = x
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        return x + identity


class ResBlock(TimestepBlock):
    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_temporal_conv=False,
                 tempspatial_aware=False):  # fmt: skip
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_temporal_conv = use_temporal_conv
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )  # fmt: skip
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)
        if self.use_temporal_conv:
            self.temopral_conv = TemporalConvBlock(
                self.out_channels, self.out_channels, dropout=0.1, spatial_aware=tempspatial_aware
            )

    def forward(self, x, emb, batch_size=None):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while len(emb_out.shape) < len(h.shape):
            emb_out = emb_out[..., None]
        h = h + emb_out
        h = self.out_layers(h)
        h = self.skip_connection(x) + h
        if self.use_temporal_conv and batch_size:
            h = bt_to_bcthw(h, batch_size)
            h = self.temopral_conv(h)
            h = bcthw_to_bt(h)
        return h


class UNetModel(nn.Module):
    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True, context_dim=None, num_heads=-1,
                 num_head_channels=-1, transformer_depth=1, use_linear=False, temporal_conv=False,
                 tempspatial_aware=False, temporal_attention=True, addition_attention=False,
                 temporal_transformer_depth=1, fps_cond=False, **unused):  # fmt: skip
        super().__init__()
        self.model_channels = model_channels
        self.temporal_attention = temporal_attention
        time_embed_dim = model_channels * 4
        self.addition_attention = addition_attention
        self.fps_cond = fps_cond

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if self.fps_cond:
            self.fps_embedding = nn.Sequential(
                nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        if self.addition_attention:
            self.init_attn = TimestepEmbedSequential(
                TemporalTransformer(
                    model_channels, n_heads=8, d_head=num_head_channels, depth=transformer_depth,
                    context_dim=context_dim,
                )
            )  # fmt: skip

        def heads_of(ch):
            if num_head_channels == -1:
                return num_heads, ch // num_heads
            return ch // num_head_channels, num_head_channels

        def attention_layers(ch):
            n_heads, dim_head = heads_of(ch)
            layers = [
                SpatialTransformer(ch, n_heads, dim_head, depth=transformer_depth, context_dim=context_dim,
                                   use_linear=use_linear)
            ]  # fmt: skip
            if self.temporal_attention:
                layers.append(
                    TemporalTransformer(ch, n_heads, dim_head, depth=temporal_transformer_depth,
                                        context_dim=context_dim, use_linear=use_linear)
                )  # fmt: skip
            return layers

        input_block_chans = [model_channels]
        ch = model_channels
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [
                    ResBlock(ch, time_embed_dim, dropout, out_channels=mult * model_channels,
                             tempspatial_aware=tempspatial_aware, use_temporal_conv=temporal_conv)
                ]  # fmt: skip
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.extend(attention_layers(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                out_ch = ch
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, out_channels=out_ch)))
                ch = out_ch
                input_block_chans.append(ch)
                ds *= 2

        layers = [
            ResBlock(ch, time_embed_dim, dropout, tempspatial_aware=tempspatial_aware,
                     use_temporal_conv=temporal_conv),
            *attention_layers(ch),  # spatial (+ temporal) transformer, whatever attention_resolutions says
        ]  # fmt: skip
        layers.append(
            ResBlock(ch, time_embed_dim, dropout, tempspatial_aware=tempspatial_aware,
                     use_temporal_conv=temporal_conv)
        )  # fmt: skip
        self.middle_block = TimestepEmbedSequential(*layers)

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [
                    ResBlock(ch + ich, time_embed_dim, dropout, out_channels=mult * model_channels,
                             tempspatial_aware=tempspatial_aware, use_temporal_conv=temporal_conv)
                ]  # fmt: skip
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.extend(attention_layers(ch))
                if level and i == num_res_blocks:
                    out_ch = ch
                    layers.append(Upsample(ch, conv_resample, out_channels=out_ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps, context=None, fps=16):
        is_fifo = x.shape[0] != timesteps.shape[0]  # FIFO-Diffusion: per-frame timesteps [b*t]
        t_emb = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(t_emb)
        if self.fps_cond:
            if type(fps) is int:
                fps = torch.full_like(timesteps, fps)
            fps_emb = timestep_embedding(fps, self.model_channels)
            emb += self.fps_embedding(fps_emb)

        b, _, t, _, _ = x.shape
        context = context.repeat_interleave(repeats=t, dim=0)
        if not is_fifo:
            emb = emb.repeat_interleave(repeats=t, dim=0)
        x = bcthw_to_bt(x)
        h = x.type(torch.float32)
        hs = []
        for id, module in enumerate(self.input_blocks):
            h = module(h, emb, context=context, batch_size=b)
            if id == 0 and self.addition_attention:
                h = self.init_attn(h, emb, context=context, batch_size=b)
            hs.append(h)
        h = self.middle_block(h, emb, context=context, batch_size=b)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb, context=context, batch_size=b)
        h = h.type(x.dtype)
        y = self.out(h)
        return bt_to_bcthw(y, b)
