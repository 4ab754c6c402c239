"""ONNX export of the denoisers, checked with onnxruntime (CPU) against eager PyTorch on tiny configs."""

import pytest
import torch

pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install onnx onnxscript)")
pytest.importorskip("onnxruntime", reason="the parity check needs onnxruntime (pip install onnxruntime)")

import onnx  # noqa: E402

from miga_fast import ConfigError  # noqa: E402
from miga_fast.cli import main  # noqa: E402
from miga_fast.export.onnx import (  # noqa: E402
    DenoiserShape,
    ExportInfo,
    export_onnx,
    infer_shape,
    onnxruntime_parity,
    read_export_info,
)
from miga_fast.models.toy import ToyDenoiser  # noqa: E402
from miga_fast.models.wan import (  # noqa: E402
    EXPORT_ROPE_POSITIONS,
    WanConfig,
    WanDiT,
    _axis_angles,
    _export_table,
    rope_split,
)

TINY_DIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1)


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return WanDiT(WanConfig(**TINY_DIT)).eval()


def input_dims(path):
    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def double_tensors(path):
    """Names of the float64 values, initializers, constants and casts to float64 of an ONNX graph."""
    graph = onnx.load(str(path)).graph
    double = onnx.TensorProto.DOUBLE
    found = [v.name for v in [*graph.input, *graph.value_info, *graph.output] if v.type.tensor_type.elem_type == double]
    found += [i.name for i in graph.initializer if i.data_type == double]
    for node in graph.node:
        for a in node.attribute:
            if (node.op_type == "Cast" and a.name == "to" and a.i == double) or (a.t.data_type == double):
                found.append(node.output[0])
    return found


def test_wan_export_with_constant_window_shape(wan, tmp_path):
    shape = infer_shape(wan, batch=2, frames=4, height=4, width=6, text_len=3)
    path = export_onnx(wan, shape, tmp_path / "wan.onnx")
    assert input_dims(path) == {"x": [2, 4, 4, 4, 6], "t": [2, 4], "context": [2, 3, 8]}
    assert read_export_info(path) == ExportInfo(shape, opset=23)
    # the default opset 23: attention as one fused node, no [B, heads, S, S] scores in the graph
    assert "Attention" in op_types(path) and "Softmax" not in op_types(path)
    assert onnxruntime_parity(path, wan, shape) < 1e-4


def test_export_holds_standard_ops_with_the_cpp_kernels_loaded(cpp_extension, wan, tmp_path):
    """With miga_fast._C loaded, eager WanDiT runs the C++ adaLN kernels; the exported graph must not."""
    shape = infer_shape(wan, batch=1, frames=3, height=4, width=4, text_len=3)
    path = export_onnx(wan, shape, tmp_path / "wan_cpp.onnx")
    domains = {node.domain for node in onnx.load(str(path)).graph.node}
    assert not any("miga_fast" in d for d in domains), domains
    assert onnxruntime_parity(path, wan, shape) < 1e-4  # ONNX (references) vs eager (C++ kernels)


def test_wan_export_with_dynamic_frames(wan, tmp_path):
    shape = DenoiserShape(batch=2, channels=4, frames=4, height=4, width=4, text_len=3, text_dim=8)
    path = export_onnx(wan, shape, tmp_path / "wan_dyn.onnx", dynamic_frames=(2, 16))
    dims = input_dims(path)
    assert isinstance(dims["x"][2], str) and dims["x"][2] == dims["t"][1] and dims["context"] == [2, 3, 8]
    assert read_export_info(path) == ExportInfo(shape, dynamic_frames=(2, 16), opset=23)
    # RoPE comes from float32 tables (no float64 angles for TensorRT to cast down)
    assert double_tensors(path) == []
    for frames in (2, 4, 9):
        assert onnxruntime_parity(path, wan, shape, frames=frames) < 1e-4, frames


def test_wan_export_with_dynamic_batch_at_opset_20(wan, tmp_path):
    """One ONNX for step kinds of several batch sizes (1 included); opset 20 keeps MatMul-Softmax-MatMul."""
    shape = DenoiserShape(batch=2, channels=4, frames=3, height=4, width=4, text_len=3, text_dim=8)
    path = export_onnx(wan, shape, tmp_path / "wan_batch.onnx", dynamic_batch=(1, 6), opset=20)
    dims = input_dims(path)
    assert isinstance(dims["x"][0], str) and dims["x"][0] == dims["t"][0] == dims["context"][0]
    assert dims["x"][1:] == [4, 3, 4, 4] and dims["t"][1] == 3 and dims["context"][1:] == [3, 8]
    assert read_export_info(path) == ExportInfo(shape, dynamic_batch=(1, 6), opset=20)
    assert {"Softmax", "MatMul"} <= op_types(path) and "Attention" not in op_types(path)
    assert double_tensors(path) == []
    for batch in (1, 2, 5):
        assert onnxruntime_parity(path, wan, shape, batch=batch, seed=batch) < 1e-4, batch


@pytest.mark.parametrize("kw, match", [
    (dict(dynamic_batch=(1, 4), batch=1), r"dynamic_batch must be .* batch >= 2"),  # a size-1 example
    (dict(dynamic_batch=(3, 4), batch=2), r"dynamic_batch must be \(lo, hi\) with 1 <= lo <= batch=2 <= hi"),
    (dict(dynamic_frames=(2, 3)), r"dynamic_frames must be \(lo, hi\) with 1 <= lo <= frames=4 <= hi"),
    (dict(dynamic_frames=(2, EXPORT_ROPE_POSITIONS + 1)), r"dynamic_frames must be at most 1024 frames"),
])
def test_export_rejects_bad_dynamic_ranges(wan, tmp_path, kw, match):
    shape = DenoiserShape(batch=kw.pop("batch", 2), channels=4, frames=4, height=4, width=4, text_len=3, text_dim=8)
    with pytest.raises(ConfigError, match=match):
        export_onnx(wan, shape, tmp_path / "bad.onnx", **kw)
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("head_dim, theta", [(128, 10000.0), (12, 10000.0), (12, 16.0)])
def test_exported_rope_tables_equal_eager(head_dim, theta):
    """The float32 tables an export carries are eager's float64 cos/sin rounded, bit for bit, at every position."""
    positions = torch.arange(EXPORT_ROPE_POSITIONS)
    for dim in set(rope_split(head_dim)):
        cos, sin = _export_table(dim, theta)
        angles = _axis_angles(positions, dim, theta)
        assert torch.equal(torch.from_numpy(cos), torch.cos(angles).float()), dim
        assert torch.equal(torch.from_numpy(sin), torch.sin(angles).float()), dim


def test_toy_export(tmp_path):
    toy = ToyDenoiser(channels=4, cond_dim=8).eval()
    shape = infer_shape(toy, batch=1, frames=8, height=6, width=6, text_len=3)
    path = export_onnx(toy, shape, tmp_path / "toy.onnx")
    assert onnxruntime_parity(path, toy, shape) < 1e-5


def test_cli_exports_the_bundled_model_format(tmp_path, capsys):
    from miga_fast.models.tiny.bundle import TinySpec, TinyVideoModel

    spec = TinySpec(frame_size=8, window=4, text_dim=8, text_length=4,
                    dit=dict(TINY_DIT, in_channels=3, out_channels=3))
    TinyVideoModel(spec).save(tmp_path / "tiny.safetensors")
    out = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", "--model", str(tmp_path / "tiny.safetensors"), "--frames", "4", "--batch", "2",
                 "--dynamic-batch", "1:4", "-o", str(out), "--check"]) == 0
    assert input_dims(out)["x"] == ["batch", 3, 4, 8, 8]
    assert read_export_info(out).dynamic_batch == (1, 4)
    text = capsys.readouterr().out
    assert "wrote" in text and "batch dynamic in [1, 4]" in text and "max abs error" in text
    err = float(text.rsplit("max abs error", 1)[1])
    assert err < 1e-4
