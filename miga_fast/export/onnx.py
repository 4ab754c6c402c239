"""ONNX export of a denoiser: x [B, C, F, H, W], t [B, F] (per-frame timesteps), context [B, S, D] -> pred.

The window shape (B, F, H, W, S) is fixed at export time, like one step kind of the engine (B counts the
CFG half: a guided batch of b windows is B = 2b). `dynamic_frames=(lo, hi)` / `dynamic_batch=(lo, hi)` opt
into a symbolic F / B (one ONNX for every window length or batch, e.g. a TensorRT engine with one profile per
step kind). The export uses the `torch.export`-based exporter (`onnxscript`); `onnxruntime_parity` checks a
file against eager PyTorch.

The file's metadata (`miga_fast.shape`, `miga_fast.dynamic_frames`, `miga_fast.dynamic_batch`) records the
export shape, which `read_export_info` gives back and `export.tensorrt` checks its optimization profiles
against.

Attention: at the default opset 23, torch 2.13's exporter writes SDPA as one ONNX `Attention` node (and
nn.RMSNorm as `RMSNormalization`); onnxruntime 1.32 runs both (parity tested). At opset < 23 attention is
MatMul -> Softmax -> MatMul around a [B, heads, S, S] score tensor (Wan2.1 480p, S = 32,760 tokens: 1.1e9
values per head and batch row), which only a runtime that fuses the pattern (TensorRT's MHA fusion) keeps
from being materialized. UNVERIFIED (TensorRT release notes, no GPU here): TensorRT parses `Attention` from
10.14 and `RMSNormalization` from 10.15, so older versions need opset=20.
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
# axis names of each input (a profile check names the axis it rejects)
AXES = {"x": ("batch", "channels", "frames", "height", "width"), "t": ("batch", "frames"),
        "context": ("batch", "text_len", "text_dim")}
DYNAMIC_AXES = ("batch", "frames")  # the axes export_onnx can make symbolic
FUSED_ATTENTION_OPSET = 23  # the first opset with Attention (and RMSNormalization)
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

    def shapes(self, frames: int | None = None, batch: int | None = None) -> dict[str, tuple[int, ...]]:
        """Input name -> shape (with `frames` / `batch` instead of the export's F / B when given)."""
        f = self.frames if frames is None else frames
        b = self.batch if batch is None else batch
        return {"x": (b, self.channels, f, self.height, self.width), "t": (b, f),
                "context": (b, self.text_len, self.text_dim)}

    def example(self, frames: int | None = None, seed: int = 0, batch: int | None = None) -> tuple[Tensor, ...]:
        """Random float32 inputs (x, t, context) of these shapes (timesteps in [0, 1000))."""
        g = torch.Generator().manual_seed(seed)
        s = self.shapes(frames, batch)
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


@dataclass(frozen=True)
class ExportInfo:
    """What an `export_onnx` file accepts: the example `shape`, the (lo, hi) range of each symbolic axis (None:
    the axis is the example's constant) and the ONNX opset (>= 23: fused Attention)."""

    shape: DenoiserShape
    dynamic_frames: tuple[int, int] | None = None
    dynamic_batch: tuple[int, int] | None = None
    opset: int | None = None

    def dynamic(self, axis: str) -> tuple[int, int] | None:
        """(lo, hi) of axis `axis` (a name of AXES) when it is symbolic, else None."""
        return {"batch": self.dynamic_batch, "frames": self.dynamic_frames}.get(axis)

    def axis_ranges(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Input name -> (lo, hi) per axis (lo == hi: a constant axis of the graph)."""
        return {name: tuple(self.dynamic(axis) or (size, size) for axis, size in zip(AXES[name], sizes, strict=True))
                for name, sizes in self.shape.shapes().items()}

    def metadata(self) -> dict[str, str]:
        """The file's metadata_props (the opset is the model's own)."""
        return {"miga_fast.shape": json.dumps(dataclasses.asdict(self.shape)),
                "miga_fast.dynamic_frames": json.dumps(self.dynamic_frames),
                "miga_fast.dynamic_batch": json.dumps(self.dynamic_batch)}


def _dynamic_range(argument: str, value: tuple[int, int], axis: str, example: int) -> tuple[int, int]:
    """`value` = (lo, hi) checked to hold the export's size `example` of `axis`."""
    # torch.export makes an axis whose example size is 1 a constant; the range itself may include 1 (torch 2.13:
    # Dim(min=1) with an example of 2 exports, and the ONNX runs at 1)
    lo, hi = value
    require(1 <= lo <= example <= hi and example >= 2, argument,
            f"(lo, hi) with 1 <= lo <= {axis}={example} <= hi, and {axis} >= 2 (torch.export makes an axis of "
            "example size 1 a constant)", value)
    return int(lo), int(hi)


def export_onnx(model, shape: DenoiserShape, path: str | Path, *, dynamic_frames: tuple[int, int] | None = None,
                dynamic_batch: tuple[int, int] | None = None, opset: int | None = FUSED_ATTENTION_OPSET) -> Path:
    """Export `model` (a denoiser module or callable, eval mode, float32) for `shape` to `path`.

    dynamic_frames=(lo, hi) / dynamic_batch=(lo, hi): F / B becomes a symbolic axis "frames" / "batch" in
    [lo, hi] (shape.frames / shape.batch, the example, must be >= 2 and within); otherwise every input shape
    is a constant of the graph. opset: 23 (default) exports attention as one fused `Attention` node, < 23 as
    MatMul-Softmax-MatMul (for TensorRT < 10.15, see the module docstring); None: the exporter's default.
    """
    from ..models.wan import EXPORT_ROPE_POSITIONS, WanDiT

    path = Path(path)
    module = DenoiserModule(model).eval()
    frames = None if dynamic_frames is None else _dynamic_range("dynamic_frames", dynamic_frames, "frames",
                                                                shape.frames)
    batch = None if dynamic_batch is None else _dynamic_range("dynamic_batch", dynamic_batch, "batch", shape.batch)
    info = ExportInfo(shape, frames, batch, opset)
    if isinstance(model, WanDiT):
        most = frames[1] if frames else shape.frames
        require(most <= EXPORT_ROPE_POSITIONS, "dynamic_frames" if frames else "frames",
                f"at most {EXPORT_ROPE_POSITIONS} frames for a WanDiT (the rows of its exported RoPE table)", most)
    dims = {axis: torch.export.Dim(axis, min=info.dynamic(axis)[0], max=info.dynamic(axis)[1])
            for axis in DYNAMIC_AXES if info.dynamic(axis)}
    # input name -> {axis index: Dim}; one Dim object per axis name ties e.g. x's and t's frames together
    dynamic = {name: {i: dims[axis] for i, axis in enumerate(AXES[name]) if axis in dims} or None for name in INPUTS}
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    from ..ops.backend import references_only

    with torch.no_grad(), references_only():  # standard ops in the graph, not the fused custom kernels
        program = torch.onnx.export(module, shape.example(), None, input_names=list(INPUTS), output_names=[OUTPUT],
                                    dynamic_shapes=dynamic if dims else None, opset_version=opset, dynamo=True)
    program.model.metadata_props.update(info.metadata())
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path, external_data=params > _EXTERNAL_DATA_BYTES)
    return path


def read_export_info(path: str | Path) -> ExportInfo:
    """The `ExportInfo` recorded in a file written by `export_onnx` (needs the `onnx` package)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "miga_fast.shape" not in meta:
        raise ConfigError(f"{path} was not written by miga_fast.export.onnx (no miga_fast.shape metadata)")

    def dynamic(key):
        value = json.loads(meta.get(key, "null"))  # files from before dynamic_batch have no such key
        return tuple(value) if value else None

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return ExportInfo(DenoiserShape(**json.loads(meta["miga_fast.shape"])), dynamic("miga_fast.dynamic_frames"),
                      dynamic("miga_fast.dynamic_batch"), opset)


def onnxruntime_parity(path: str | Path, model, shape: DenoiserShape, frames: int | None = None,
                       seed: int = 0, batch: int | None = None) -> float:
    """Max |onnxruntime - eager| on random inputs (F, B = `frames`, `batch` or the export's) on the CPU provider."""
    import onnxruntime as ort

    x, t, context = shape.example(frames, seed, batch)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT], {"x": x.numpy(), "t": t.numpy(), "context": context.numpy()})[0]
    with torch.no_grad():
        ref = DenoiserModule(model)(x, t, context)
    return float((torch.from_numpy(out) - ref).abs().max())


def load_denoiser(path: str | Path, *, height: int | None, width: int | None,
                  text_len: int | None) -> tuple[nn.Module, dict]:
    """A bundled-model .safetensors (its denoiser `.net`, sizes from the bundle) or a diffusers Wan folder
    (sizes must be given) -> (denoiser module, default infer_shape keywords)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        from ..models.tiny.bundle import TinyVideoModel

        bundle = TinyVideoModel.load(path)
        spec = bundle.spec
        return bundle.net, dict(height=height or spec.frame_size, width=width or spec.frame_size,
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
        out = export_onnx(model, shape, args.output, dynamic_frames=args.dynamic_frames,
                          dynamic_batch=args.dynamic_batch, opset=args.opset)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript): "
                          f"{exc}") from exc
    print(f"wrote {out}: x {shape.shapes()['x']}, t {shape.shapes()['t']}, context {shape.shapes()['context']}"
          + (f", frames dynamic in {list(args.dynamic_frames)}" if args.dynamic_frames else "")
          + (f", batch dynamic in {list(args.dynamic_batch)}" if args.dynamic_batch else ""))
    if args.check:
        print(f"onnxruntime vs eager: max abs error {onnxruntime_parity(out, model, shape):.3g}")
    return 0
