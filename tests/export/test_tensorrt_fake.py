"""build_engine / TRTDenoiser against a stand-in `tensorrt` module that records our calls.

It checks our side only (which flags, precisions, contexts, buffers and shapes we hand TensorRT, and what we do
with its answers), not what TensorRT does with them: the `gpu`/`trt` test in test_tensorrt.py runs the real one.
"""

import sys
from types import SimpleNamespace

import pytest
import torch

from miga_fast import ConfigError
from miga_fast.export.onnx import DenoiserShape, ExportInfo
from miga_fast.export.tensorrt import TRTDenoiser, build_engine, dynamic_frames_profile, static_profile

from .test_tensorrt import VERSIONS, write_export

SHAPE = DenoiserShape(batch=2, channels=4, frames=4, height=4, width=4, text_len=3, text_dim=8)
GPU = dict(arch="sm_90", device_name="NVIDIA H100 80GB HBM3", versions=VERSIONS)


class Layer:
    def __init__(self, type, dtype="float32"):
        self.type, self.precision, self._dtype, self.output_types = type, "unset", dtype, {}

    def get_output(self, index):
        return SimpleNamespace(dtype=self._dtype)

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class Context:
    def __init__(self, strategy, log, reject=None):
        self.strategy, self.log, self.reject = strategy, log, reject

    def set_device_memory(self, ptr, size):
        self.log.append(("memory", ptr, size))

    def set_optimization_profile_async(self, index, stream):
        self.log.append(("profile", index, stream))

    def set_input_shape(self, name, shape):
        return name != self.reject  # TensorRT answers False for a shape outside the context's profile

    def set_tensor_address(self, name, ptr):
        pass

    def execute_async_v3(self, stream):
        self.log.append(("execute", stream))
        return True


def fake_tensorrt(layers=(), parse_ok=True, precision_flags=True, memory=4096, profiles=2, reject=None):
    """A `tensorrt` stand-in; `trt.log` lists what was called. precision_flags=False: TensorRT 11 (strong typing)."""
    log = []
    trt = SimpleNamespace(__version__="10.99" if precision_flags else "11.0", log=log, float32="float32")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.LayerType = SimpleNamespace(**{t: t for t in ("NORMALIZATION", "REDUCE", "UNARY", "SOFTMAX",
                                                      "MATRIX_MULTIPLY", "ELEMENTWISE")})
    trt.BuilderFlag = SimpleNamespace(**({"FP16": "FP16", "BF16": "BF16", "OBEY_PRECISION_CONSTRAINTS": "OBEY"}
                                         if precision_flags else {}))
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ExecutionContextAllocationStrategy = SimpleNamespace(STATIC="STATIC", USER_MANAGED="USER_MANAGED")
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    config = SimpleNamespace(set_flag=lambda flag: log.append(("flag", flag)),
                             set_memory_pool_limit=lambda pool, size: log.append(("pool", pool, size)),
                             add_optimization_profile=lambda profile: log.append(("add_profile", profile)))
    trt.Builder = lambda logger: SimpleNamespace(
        create_network=lambda flags: network, create_builder_config=lambda: config,
        create_optimization_profile=lambda: SimpleNamespace(set_shape=lambda *a: log.append(("shape", *a))),
        build_serialized_network=lambda net, cfg: b"plan")
    trt.OnnxParser = lambda net, logger: SimpleNamespace(parse_from_file=lambda path: parse_ok, num_errors=1,
                                                         get_error=lambda i: "No importer registered for op")
    engine = SimpleNamespace(num_optimization_profiles=profiles, device_memory_size_v2=memory,
                             create_execution_context=lambda strategy: Context(strategy, log, reject))
    trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    return trt


@pytest.fixture
def onnx_file(tmp_path):
    return write_export(tmp_path / "m.onnx", ExportInfo(SHAPE, dynamic_frames=(2, 8), opset=23))


PROFILES = [static_profile("b2f4", SHAPE.shapes()), dynamic_frames_profile(SHAPE, 2, 8)]


def layers():
    return {"norm": Layer("NORMALIZATION"), "mean": Layer("REDUCE"), "cos": Layer("UNARY"), "soft": Layer("SOFTMAX"),
            "matmul": Layer("MATRIX_MULTIPLY"), "add": Layer("ELEMENTWISE"), "shape_max": Layer("REDUCE", "int64")}


@pytest.mark.parametrize("dtype, flag", [("bfloat16", "BF16"), ("float16", "FP16")])
def test_half_precision_builds_pin_the_sensitive_layers_to_float32(onnx_file, tmp_path, monkeypatch, dtype, flag):
    named = layers()
    trt = fake_tensorrt(list(named.values()))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = build_engine(onnx_file, PROFILES, cache_dir=tmp_path / "cache", dtype=dtype, **GPU)
    assert plan.read_bytes() == b"plan" and plan.with_suffix(".json").is_file()
    assert [e for e in trt.log if e[0] == "flag"] == [("flag", flag), ("flag", "OBEY")]
    pinned = {n for n, layer in named.items() if layer.precision == "float32" and layer.output_types == {0: "float32"}}
    assert pinned == {"norm", "mean", "cos", "soft"}  # not the matmul, the add, nor int64 shape arithmetic
    assert all(named[n].precision == "unset" and not named[n].output_types for n in named.keys() - pinned)
    assert [e[1] for e in trt.log if e[0] == "shape"] == ["x", "t", "context"] * 2


def test_bfloat16_is_the_default_and_float32_sets_no_precision(onnx_file, tmp_path, monkeypatch):
    named = layers()
    trt = fake_tensorrt(list(named.values()))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert "-bfloat16-" in build_engine(onnx_file, PROFILES, cache_dir=tmp_path, **GPU).name
    trt.log.clear()
    for layer in named.values():
        layer.precision, layer.output_types = "unset", {}
    build_engine(onnx_file, PROFILES, cache_dir=tmp_path, dtype="float32", **GPU)
    assert not [e for e in trt.log if e[0] == "flag"]
    assert all(layer.precision == "unset" and not layer.output_types for layer in named.values())


def test_half_precision_without_precision_flags_says_what_to_do(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(precision_flags=False))
    with pytest.raises(ConfigError, match=r"dtype='bfloat16' needs TensorRT 10.*TensorRT 11\.0.*dtype='float32'"):
        build_engine(onnx_file, PROFILES, cache_dir=tmp_path, **GPU)
    assert build_engine(onnx_file, PROFILES, cache_dir=tmp_path, dtype="float32", **GPU).is_file()


def test_parse_failure_of_an_opset_23_export_names_the_tensorrt_version(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(parse_ok=False))
    with pytest.raises(RuntimeError, match=r"No importer registered for op \(an opset-23 export .* TensorRT parses "
                                           r"from 10\.15 on: export with opset=20"):
        build_engine(onnx_file, PROFILES, cache_dir=tmp_path, **GPU)
    assert not list(tmp_path.glob("*.plan"))


@pytest.fixture
def stream(monkeypatch):
    """torch.cuda.current_stream on the CPU: a stand-in stream handle (the inputs here are CPU tensors)."""
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=7))


def test_contexts_share_one_user_managed_buffer(tmp_path, monkeypatch, stream):
    trt = fake_tensorrt(memory=4096)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    (tmp_path / "e.plan").write_bytes(b"plan")
    denoiser = TRTDenoiser(tmp_path / "e.plan", PROFILES)
    for frames in (4, 6, 4, 6):  # b2f4 is the static profile 0, F = 6 only fits the dynamic profile 1
        out = denoiser(*SHAPE.example(frames))
        assert out.shape == (2, 4, frames, 4, 4) and out.dtype == torch.float32
    contexts = denoiser._contexts
    assert sorted(contexts) == [0, 1] and {c.strategy for c in contexts.values()} == {"USER_MANAGED"}
    buffer = denoiser._memory
    assert buffer.dtype == torch.uint8 and buffer.numel() == 4096
    memory = [e for e in trt.log if e[0] == "memory"]
    assert memory == [("memory", buffer.data_ptr(), 4096)] * 2  # one buffer, one set per context
    assert [e for e in trt.log if e[0] == "profile"] == [("profile", 0, 7), ("profile", 1, 7)]
    assert [e for e in trt.log if e[0] == "execute"] == [("execute", 7)] * 4


def test_a_rejected_input_shape_raises(tmp_path, monkeypatch, stream):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(reject="t"))
    (tmp_path / "e.plan").write_bytes(b"plan")
    denoiser = TRTDenoiser(tmp_path / "e.plan", PROFILES)
    with pytest.raises(ValueError, match=r"TensorRT rejected input 't' of shape \(2, 6\) for profile 'b2f2-8' "
                                         r"\(index 1\): was the engine built with other profiles"):
        denoiser(*SHAPE.example(6))
