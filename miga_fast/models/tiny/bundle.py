"""The bundled model: a small denoiser in pixel space + the tiny text encoder, one safetensors file.

Two architectures (`TinySpec.arch`):
  * "wan": a Wan2.1 DiT (`WanDiT`), flow matching, sampled with flow UniPC (presets tiny-*);
  * "vc2": a VideoCrafter2 3-D UNet (`VC2UNet`), epsilon prediction on VideoCrafter2's DDPM tables, sampled with
    its DDIM (presets tiny-vc2-*): the setting of the FIFO-Diffusion and MIGA papers' headline numbers.

The file stores both modules' weights (prefixes `dit.` or `unet.`, and `text.`) and, in its metadata, the spec
(architecture config, text encoder size, frame size, native window, schedule), so loading needs nothing but
the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...solvers.ddim import vc2_alphas_cumprod
from ..vc2_unet import VC2Config, VC2UNet
from ..wan import WanConfig, WanDiT
from .text import TinyTextEncoder

DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "tiny_world.safetensors"
ARCHS = ("wan", "vc2")
UNET_TARGETS = ("eps", "v")
# A VC2UNet a CPU trains (about 0.6 s for 4 clips of 8 frames at 32x32, fwd + bwd, 2 threads): two
# resolution levels below the input, spatial + temporal attention only at the lowest (8x8), no init_attn / fps.
VC2_TINY_UNET = dict(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                     attention_resolutions=(4,), num_head_channels=32, context_dim=64, addition_attention=False,
                     fps_cond=False)


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Everything besides weights: sizes, native window and the flow schedule it was trained for."""

    frame_size: int = 32
    window: int = 8  # f0: frames per native clip
    text_dim: int = 64
    text_length: int = 12
    shift: float = 3.0  # flow-matching sigma shift used in training and sampling (arch "wan")
    arch: str = "wan"  # "wan" (WanDiT, `dit`) or "vc2" (VC2UNet, `unet`)
    # arch "vc2": what the UNet's own output is, "eps" (VideoCrafter2) or "v" (v = sqrt(acp) eps - sqrt(1-acp) x0);
    # a "v" UNet's denoiser still returns eps (see TinyVideoModel.denoise), so sampling is VideoCrafter2's DDIM
    unet_target: str = "eps"
    unet: dict | None = None  # VC2Config keywords (arch "vc2")
    dit: dict = dataclasses.field(default_factory=lambda: dict(
        patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=24, in_channels=3, out_channels=3,
        text_dim=64, freq_dim=64, ffn_dim=256, num_layers=6,
        # 4 frequencies per RoPE axis over an 8-patch frame: at Wan's 1e4 (1, 0.1, 0.01, 0.001 rad/patch) rows
        # 6 apart look alike (mean cos 0.95) and samples drew a second piece there; at 20 (1, 0.47, 0.22, 0.11)
        # similarity falls with distance (0.85 for neighbours, 0.26 at 6)
        rope_theta=20.0))

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"TinySpec.arch must be one of {ARCHS} (got {self.arch!r})")
        if self.arch == "vc2" and not self.unet:
            raise ValueError("TinySpec.unet (VC2Config keywords) is required for arch 'vc2'")
        if self.unet_target not in UNET_TARGETS or (self.arch == "wan" and self.unet_target != "eps"):
            raise ValueError(f"TinySpec.unet_target must be one of {UNET_TARGETS} (arch 'vc2' only; got "
                             f"{self.unet_target!r} for arch {self.arch!r})")

    @classmethod
    def vc2(cls, **kw) -> TinySpec:
        """The bundled UNet's spec (VC2_TINY_UNET), `kw` overriding fields."""
        return cls(**{"arch": "vc2", "unet": dict(VC2_TINY_UNET), **kw})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TinySpec:
        """The inverse of `to_json` (JSON has no tuples: the configs' tuples are restored)."""
        values = json.loads(text)
        values["dit"]["patch_size"] = tuple(values["dit"]["patch_size"])
        if values.get("unet"):
            values["unet"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values["unet"].items()}
        return cls(**values)

    @property
    def prediction(self) -> str:
        """What the denoiser predicts: "flow" (wan) or "eps" (vc2)."""
        return "flow" if self.arch == "wan" else "eps"

    @property
    def family(self) -> str:
        """The preset family it samples with: "tiny" (tiny-*, flow UniPC) or "tiny-vc2" (tiny-vc2-*, DDIM)."""
        return "tiny" if self.arch == "wan" else "tiny-vc2"

    @property
    def size_multiple(self) -> int:
        """Frame sides must be multiples of this (the DiT's patch, the UNet's downsampling)."""
        if self.arch == "wan":
            return math.lcm(self.dit["patch_size"][1], self.dit["patch_size"][2])
        return 2 ** (len(self.unet["channel_mult"]) - 1)


def vc2_table(device: torch.device | None = None) -> torch.Tensor:
    """VideoCrafter2's DDPM alpha-bar table ``[1000]`` in fp32: what the tiny UNet trains and denoises on."""
    return torch.tensor(vc2_alphas_cumprod(), dtype=torch.float32, device=device)


class TinyVideoModel(nn.Module):
    """denoise(x [B, 3, F, H, W] in [-1, 1] pixel space, t [B, F], text [B, S, D]) -> flow (wan) or eps (vc2,
    whatever its `unet_target`).

    The denoiser is `self.dit` (arch "wan") or `self.unet` (arch "vc2"); `self.net` is whichever it is.
    """

    def __init__(self, spec: TinySpec = TinySpec()):
        super().__init__()
        self.spec = spec
        if spec.arch == "wan":
            self.dit = WanDiT(WanConfig(**spec.dit))
        else:
            self.unet = VC2UNet(VC2Config(**spec.unet))
            if spec.unet_target == "v":  # VideoCrafter2's DDPM table [1000] (not saved: it is not trained)
                self.register_buffer("alphas_cumprod", vc2_table(), persistent=False)
        self.text = TinyTextEncoder(spec.text_dim, spec.text_length)

    def _apply(self, fn, recurse=True):
        # `.to(device, dtype)` moves the table but must not round it to the weights' dtype (bf16: 8 mantissa bits)
        super()._apply(fn, recurse)
        if hasattr(self, "alphas_cumprod"):
            self.alphas_cumprod = vc2_table(self.alphas_cumprod.device)
        return self

    @property
    def net(self) -> nn.Module:
        return self.dit if self.spec.arch == "wan" else self.unet

    @property
    def _prefix(self) -> str:
        return "dit." if self.spec.arch == "wan" else "unet."

    def denoise(self, x, t, cond):
        out = self.net.denoise(x, t, cond)
        if self.spec.unet_target == "eps":
            return out
        # v -> eps: eps = sqrt(acp) v + sqrt(1 - acp) x. Why a "v" UNet: with eps the UNet must copy each frame's
        # input mean into its output to within ~0.007 at t = 999 (x0 = (x - sqrt(1-acp) eps) / 0.068), which its
        # per-frame GroupNorms strip; here x's mean reaches eps through the formula, not through the network
        a = self.alphas_cumprod[t.long()].view(t.shape[0], 1, t.shape[1], 1, 1)
        return (a.sqrt() * out.float() + (1 - a).sqrt() * x.float()).to(x.dtype)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        meta = {"spec": self.spec.to_json(), **{k: str(v) for k, v in (extra or {}).items()}}
        tensors = {f"{self._prefix}{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors.update({f"text.{k}": v.contiguous() for k, v in self.text.state_dict().items()})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS, device: str | torch.device = "cpu") -> TinyVideoModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"bundled model weights {path} not found (train them with "
                                    "`python -m miga_fast.models.tiny.train`)")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "spec" not in meta:
            raise ValueError(f"{path} is not a miga_fast bundled-model file (no 'spec' metadata)")
        model = cls(TinySpec.from_json(meta["spec"]))
        state = load_file(str(path))
        n = len(model._prefix)
        model.net.load_state_dict({k[n:]: v for k, v in state.items() if k.startswith(model._prefix)}, strict=True)
        model.text.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("text.")}, strict=True)
        model.metadata = meta
        return model.to(device).eval()
