"""ONNX export of a denoiser: x [B, C, F, H, W], t [B, F] (per-frame timesteps), context [B, S, D] -> pred.

The window shape (B, F, H, W, S) is fixed at export time, like one step kind of the engine (B counts the
CFG half: a guided batch of b windows is B = 2b). `dynamic_frames=(lo, hi)` opts into a symbolic F
(one ONNX for every window length, e.g. a TensorRT profile per length). The export uses the
`torch.export`-based exporter (`onnxscript`); `onnxruntime_parity` checks a file against eager PyTorch.

The file's metadata (`miga_fast.shape`, `miga_fast.dynamic_frames`) records the export shape, which
`export.tensorrt` reads back to build its optimization profiles.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, require

INPUTS = ("x", "t", "context")
OUTPUT = "pred"
_EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GiB: bigger weights go to a side file


@dataclass(frozen=True)
class DenoiserShape:
    """Input sizes of one export: x [batch, channels, frames, height, width], t [batch, frames],
    context [batch, text_len, text_dim]."""

    batch: int
    channels: int
    frames: int
    height: int
    width: int
    text_len: int
    text_dim: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            require(getattr(self, f.name) >= 1, f.name, "an integer >= 1", getattr(self, f.name))

    def shapes(self, frames: int | None = None) -> dict[str, tuple[int, ...]]:
        """Input name -> shape (with `frames` instead of the export's F when given)."""
        f = self.frames if frames is None else frames
        return {"x": (self.batch, self.channels, f, self.height, self.width), "t": (self.batch, f),
                "context": (self.batch, self.text_len, self.text_dim)}

    def example(self, frames: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Random float32 inputs of these shapes (timesteps in [0, 1000))."""
        g = torch.Generator().manual_seed(seed)
        s = self.shapes(frames)
        return (torch.randn(s["x"], generator=g), torch.rand(s["t"], generator=g) * 1000,
                torch.randn(s["context"], generator=g))


class DenoiserModule(nn.Module):
    """Any engine denoiser (module or `denoise(x, t, cond)` callable) as a module with inputs (x, t, context)."""

    def __init__(self, denoiser):
        super().__init__()
        self.inner = denoiser if isinstance(denoiser, nn.Module) else None
        self._fn = getattr(denoiser, "denoise", denoiser)

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        return self._fn(x, t, context)


def infer_shape(model: nn.Module, *, batch: int, frames: int, height: int, width: int,
                text_len: int) -> DenoiserShape:
    """The DenoiserShape of a WanDiT or ToyDenoiser (channels and text width come from the model)."""
    from ..models.toy import ToyDenoiser
    from ..models.wan import WanDiT

    if isinstance(model, WanDiT):
        channels, text_dim = model.config.in_channels, model.config.text_dim
    elif isinstance(model, ToyDenoiser):
        channels, text_dim = model.conv.in_channels, model.cond.in_features
    else:
        raise ConfigError(f"cannot infer the input sizes of a {type(model).__name__}; build a DenoiserShape")
    return DenoiserShape(batch, channels, frames, height, width, text_len, text_dim)


def export_onnx(model, shape: DenoiserShape, path: str | Path, *, dynamic_frames: tuple[int, int] | None = None,
                opset: int | None = None) -> Path:
    """Export `model` (a denoiser module or callable, eval mode, float32) for `shape` to `path`.

    dynamic_frames=(lo, hi): F becomes a symbolic axis "frames" in [lo, hi] (lo >= 2: torch.export
    specializes size-1 axes); otherwise every input shape is a constant of the graph.
    """
    path = Path(path)
    module = DenoiserModule(model).eval()
    dynamic = None
    if dynamic_frames is not None:
        lo, hi = dynamic_frames
        require(2 <= lo <= shape.frames <= hi, "dynamic_frames",
                f"(lo, hi) with 2 <= lo <= frames={shape.frames} <= hi", dynamic_frames)
        frames = torch.export.Dim("frames", min=lo, max=hi)
        dynamic = {"x": {2: frames}, "t": {1: frames}, "context": None}
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    from ..ops.backend import references_only

    with torch.no_grad(), references_only():  # standard ops in the graph, not the fused custom kernels
        program = torch.onnx.export(module, shape.example(), None, input_names=list(INPUTS), output_names=[OUTPUT],
                                    dynamic_shapes=dynamic, opset_version=opset, dynamo=True)
    program.model.metadata_props["miga_fast.shape"] = json.dumps(dataclasses.asdict(shape))
    program.model.metadata_props["miga_fast.dynamic_frames"] = json.dumps(dynamic_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path, external_data=params > _EXTERNAL_DATA_BYTES)
    return path


def read_export_info(path: str | Path) -> tuple[DenoiserShape, tuple[int, int] | None]:
    """(shape, dynamic_frames) recorded in a file written by `export_onnx` (needs the `onnx` package)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "miga_fast.shape" not in meta:
        raise ConfigError(f"{path} was not written by miga_fast.export.onnx (no miga_fast.shape metadata)")
    dyn = json.loads(meta.get("miga_fast.dynamic_frames", "null"))
    return DenoiserShape(**json.loads(meta["miga_fast.shape"])), (tuple(dyn) if dyn else None)


def onnxruntime_parity(path: str | Path, model, shape: DenoiserShape, frames: int | None = None,
                       seed: int = 0) -> float:
    """Max |onnxruntime - eager| on random inputs (F = `frames` or the export's) on the CPU provider."""
    import onnxruntime as ort

    x, t, context = shape.example(frames, seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT], {"x": x.numpy(), "t": t.numpy(), "context": context.numpy()})[0]
    with torch.no_grad():
        ref = DenoiserModule(model)(x, t, context)
    return float((torch.from_numpy(out) - ref).abs().max())


def load_denoiser(path: str | Path, *, height: int | None, width: int | None,
                  text_len: int | None) -> tuple[nn.Module, dict]:
    """A bundled-model .safetensors (its `.dit`, sizes from the bundle) or a diffusers Wan folder
    (sizes must be given) -> (denoiser module, default infer_shape keywords)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        from ..models.tiny.bundle import TinyVideoModel

        bundle = TinyVideoModel.load(path)
        spec = bundle.spec
        return bundle.dit, dict(height=height or spec.frame_size, width=width or spec.frame_size,
                                text_len=text_len or spec.text_length)
    if path.is_dir():
        from ..models.wan import WanDiT

        if not (height and width):
            raise ConfigError("--height and --width (latent size) are required for a Wan model folder")
        return WanDiT.from_pretrained(path), dict(height=height, width=width, text_len=text_len or 512)
    raise FileNotFoundError(f"model {str(path)!r}: expected a bundled-model .safetensors file or a diffusers "
                            "Wan folder")


def cmd_export_onnx(args) -> int:
    """`miga-fast export onnx` (arguments: see cli.py)."""
    model, sizes = load_denoiser(args.model, height=args.height, width=args.width, text_len=args.text_len)
    shape = infer_shape(model, batch=args.batch, frames=args.frames, **sizes)
    try:
        out = export_onnx(model, shape, args.output, dynamic_frames=args.dynamic_frames, opset=args.opset)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript): "
                          f"{exc}") from exc
    print(f"wrote {out}: x {shape.shapes()['x']}, t {shape.shapes()['t']}, context {shape.shapes()['context']}"
          + (f", frames dynamic in {list(args.dynamic_frames)}" if args.dynamic_frames else ""))
    if args.check:
        print(f"onnxruntime vs eager: max abs error {onnxruntime_parity(out, model, shape):.3g}")
    return 0
