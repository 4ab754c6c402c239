"""The bundled model: a small Wan2.1 DiT in pixel space + the tiny text encoder, one safetensors file.

The file stores both modules' weights (prefixes `dit.` and `text.`) and, in its metadata, the DiT's
WanConfig, the text encoder's size, the frame size, the native window and the flow schedule, so
loading needs nothing but the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..wan import WanConfig, WanDiT
from .text import TinyTextEncoder

DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "tiny_world.safetensors"


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Everything besides weights: sizes, native window and the flow schedule it was trained for."""

    frame_size: int = 32
    window: int = 8  # f0: frames per native clip
    text_dim: int = 64
    text_length: int = 12
    shift: float = 3.0  # flow-matching sigma shift used in training and sampling
    dit: dict = dataclasses.field(default_factory=lambda: dict(
        patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=24, in_channels=3, out_channels=3,
        text_dim=64, freq_dim=64, ffn_dim=256, num_layers=6,
        # 4 frequencies per RoPE axis over an 8-patch frame: at Wan's 1e4 (1, 0.1, 0.01, 0.001 rad/patch) rows
        # 6 apart look alike (mean cos 0.95) and samples drew a second piece there; at 20 (1, 0.47, 0.22, 0.11)
        # similarity falls with distance (0.85 for neighbours, 0.26 at 6)
        rope_theta=20.0))


class TinyVideoModel(nn.Module):
    """denoise(x [B, 3, F, H, W] in [-1, 1] pixel space, t [B, F], text [B, S, D]) -> flow."""

    def __init__(self, spec: TinySpec = TinySpec()):
        super().__init__()
        self.spec = spec
        self.dit = WanDiT(WanConfig(**spec.dit))
        self.text = TinyTextEncoder(spec.text_dim, spec.text_length)

    def denoise(self, x, t, cond):
        return self.dit.denoise(x, t, cond)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        meta = {"spec": json.dumps(dataclasses.asdict(self.spec)), **{k: str(v) for k, v in (extra or {}).items()}}
        tensors = {f"dit.{k}": v.contiguous() for k, v in self.dit.state_dict().items()}
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
        spec_dict = json.loads(meta["spec"])
        spec_dict["dit"]["patch_size"] = tuple(spec_dict["dit"]["patch_size"])
        model = cls(TinySpec(**spec_dict))
        state = load_file(str(path))
        model.dit.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dit.")}, strict=True)
        model.text.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("text.")}, strict=True)
        model.metadata = meta
        return model.to(device).eval()
