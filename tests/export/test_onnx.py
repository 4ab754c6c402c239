"""ONNX export of the denoisers, checked with onnxruntime (CPU) against eager PyTorch on tiny configs."""

import pytest
import torch

pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install onnx onnxscript)")
pytest.importorskip("onnxruntime", reason="the parity check needs onnxruntime (pip install onnxruntime)")

import onnx  # noqa: E402

from miga_fast.cli import main  # noqa: E402
from miga_fast.export.onnx import (  # noqa: E402
    DenoiserShape,
    export_onnx,
    infer_shape,
    onnxruntime_parity,
    read_export_info,
)
from miga_fast.models.toy import ToyDenoiser  # noqa: E402
from miga_fast.models.wan import WanConfig, WanDiT  # noqa: E402

TINY_DIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1)


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return WanDiT(WanConfig(**TINY_DIT)).eval()


def input_dims(path):
    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def test_wan_export_with_constant_window_shape(wan, tmp_path):
    shape = infer_shape(wan, batch=2, frames=4, height=4, width=6, text_len=3)
    path = export_onnx(wan, shape, tmp_path / "wan.onnx")
    assert input_dims(path) == {"x": [2, 4, 4, 4, 6], "t": [2, 4], "context": [2, 3, 8]}
    assert read_export_info(path) == (shape, None)
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
    assert read_export_info(path) == (shape, (2, 16))
    for frames in (2, 4, 9):
        assert onnxruntime_parity(path, wan, shape, frames=frames) < 1e-4, frames


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
                 "-o", str(out), "--check"]) == 0
    assert input_dims(out)["x"] == [2, 3, 4, 8, 8]
    text = capsys.readouterr().out
    assert "wrote" in text and "max abs error" in text
    err = float(text.rsplit("max abs error", 1)[1])
    assert err < 1e-4
