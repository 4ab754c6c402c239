"""TensorRT export: profiles per step kind, shape selection, engine cache keys (pure Python); GPU parts skip."""

import sys

import pytest
import torch

from miga_fast import ConfigError
from miga_fast.export.onnx import DenoiserShape, ExportInfo
from miga_fast.export.tensorrt import (
    INSTALL_HINT,
    CacheKey,
    Profile,
    build_engine,
    check_profiles,
    dynamic_frames_profile,
    profile_for_kind,
    profiles_for_kinds,
    require_tensorrt,
    select_profile,
    slug,
    static_profile,
    weights_hash,
)
from miga_fast.runtime.step import StepKey

SHAPE = DenoiserShape(batch=2, channels=16, frames=21, height=60, width=104, text_len=512, text_dim=4096)
VERSIONS = {"tensorrt": "10.3.0", "cuda": "12.4", "torch": "2.5.0"}
H100 = "NVIDIA H100 80GB HBM3"


def write_export(path, info: ExportInfo):
    """A minimal ONNX file (x -> pred) with the metadata `export_onnx` writes for `info`."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["pred"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("pred", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", info.opset or 20)])
    helper.set_model_props(model, info.metadata())
    onnx.save(model, str(path))
    return path


def kind(batch, frames, cfg=True, **kw):
    return StepKey(batch, frames, cfg, kw.get("renoise", False), kw.get("noise", False), kw.get("held", False))


def test_profile_per_step_kind():
    p = profile_for_kind(kind(3, 21), SHAPE)
    assert p.name == "b6f21"  # CFG doubles the denoiser batch
    assert dict((n, (a, b, c)) for n, a, b, c in p.inputs) == {
        "x": ((6, 16, 21, 60, 104),) * 3, "t": ((6, 21),) * 3, "context": ((6, 512, 4096),) * 3}
    assert profile_for_kind(kind(3, 21, cfg=False), SHAPE).name == "b3f21"


def test_kinds_with_the_same_denoiser_shapes_share_a_profile():
    keys = [kind(1, 21), kind(1, 21, renoise=True), kind(1, 21, held=True, noise=True), kind(6, 21), kind(1, 20)]
    assert [p.name for p in profiles_for_kinds(keys, SHAPE)] == ["b2f20", "b2f21", "b12f21"]


def test_dynamic_frames_profile_and_selection():
    dyn = dynamic_frames_profile(SHAPE, 2, 32)
    assert dyn.covers(SHAPE.shapes(2)) and dyn.covers(SHAPE.shapes(32)) and not dyn.covers(SHAPE.shapes(33))
    fixed = static_profile("b2f21", SHAPE.shapes())
    profiles = [fixed, dyn]
    assert select_profile(profiles, SHAPE.shapes()) == 0  # the static profile first: best kernels for it
    assert select_profile(profiles, SHAPE.shapes(9)) == 1
    with pytest.raises(ValueError, match=r"no TensorRT optimization profile covers .* \['b2f21', 'b2f2-32'\]"):
        select_profile(profiles, SHAPE.shapes(40))


def test_bad_profiles_are_rejected():
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        Profile("bad", (("x", (1, 4), (1, 8), (1, 6)),))
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        Profile("rank", (("x", (1, 4), (1, 4, 1), (1, 4)),))


def test_cache_key_changes_with_every_component():
    profiles = [profile_for_kind(kind(1, 21), SHAPE)]
    base = CacheKey.make("w" * 64, profiles, "float16", "sm_90", H100, VERSIONS)
    assert base.digest() == CacheKey.make("w" * 64, list(profiles), "float16", "sm_90", H100,
                                          dict(reversed(VERSIONS.items()))).digest()
    variants = [
        CacheKey.make("v" * 64, profiles, "float16", "sm_90", H100, VERSIONS),
        CacheKey.make("w" * 64, [profile_for_kind(kind(2, 21), SHAPE)], "float16", "sm_90", H100, VERSIONS),
        CacheKey.make("w" * 64, profiles + [profile_for_kind(kind(2, 21), SHAPE)], "float16", "sm_90", H100,
                      VERSIONS),
        CacheKey.make("w" * 64, profiles, "bfloat16", "sm_90", H100, VERSIONS),
        CacheKey.make("w" * 64, profiles, "float16", "sm_89", H100, VERSIONS),
        CacheKey.make("w" * 64, profiles, "float16", "sm_90", "NVIDIA H200", VERSIONS),  # same sm_90, other GPU
        CacheKey.make("w" * 64, profiles, "float16", "sm_90", H100, {**VERSIONS, "tensorrt": "10.4.0"}),
        CacheKey.make("w" * 64, profiles, "float16", "sm_90", H100, {**VERSIONS, "cuda": "12.6"}),
    ]
    digests = {base.digest()} | {v.digest() for v in variants}
    assert len(digests) == len(variants) + 1
    assert base.filename().startswith("denoiser-sm_90-nvidia-h100-80gb-hbm3-float16-")
    assert base.filename().endswith(".plan")
    assert variants[5].filename().startswith("denoiser-sm_90-nvidia-h200-float16-")


def test_gpu_name_slug():
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("NVIDIA GeForce RTX 4090 (laptop) ") == "nvidia-geforce-rtx-4090-laptop"
    assert CacheKey.make("w", [], "float32", "sm_90", H100, {}) == CacheKey.make("w", [], "float32", "sm_90",
                                                                                  slug(H100), {})


def test_profiles_must_fit_the_exports_axes():
    """Profiles of several batch sizes need an export with a symbolic batch; each misfit names profile and axis."""
    two_kinds = profiles_for_kinds([kind(1, 21), kind(3, 21)], SHAPE)  # denoiser batches 2 and 6
    with pytest.raises(ConfigError, match=r"profile 'b6f21', input 'x', axis batch: needs 6\.\.6, the ONNX "
                                          r"accepts only 2; export with dynamic_batch=\(lo, hi\) \(--dynamic-batch\)"):
        check_profiles(two_kinds, ExportInfo(SHAPE))
    check_profiles(two_kinds, ExportInfo(SHAPE, dynamic_batch=(2, 6)))
    check_profiles(two_kinds[:1], ExportInfo(SHAPE))  # the export's own shape
    with pytest.raises(ConfigError, match=r"'b6f21', input 'x', axis batch: needs 6\.\.6, the ONNX accepts 2\.\.4"):
        check_profiles(two_kinds, ExportInfo(SHAPE, dynamic_batch=(2, 4)))

    frames = [dynamic_frames_profile(SHAPE, 2, 32)]
    with pytest.raises(ConfigError, match=r"'b2f2-32', input 'x', axis frames: needs 2\.\.32, the ONNX accepts "
                                          r"only 21; export with dynamic_frames"):
        check_profiles(frames, ExportInfo(SHAPE, dynamic_batch=(1, 8)))
    check_profiles(frames, ExportInfo(SHAPE, dynamic_frames=(2, 32)))

    other = DenoiserShape(batch=2, channels=16, frames=21, height=30, width=52, text_len=512, text_dim=4096)
    with pytest.raises(ConfigError, match=r"input 'x', axis height: needs 30\.\.30, the ONNX accepts only 60; "
                                          r"export for this height"):
        check_profiles([static_profile("small", other.shapes())], ExportInfo(SHAPE, dynamic_frames=(2, 32)))
    with pytest.raises(ConfigError, match=r"profile 'rank', input 't': 3 axes, the ONNX's has 2"):
        check_profiles([Profile("rank", (("t", (2, 21, 1), (2, 21, 1), (2, 21, 1)),))], ExportInfo(SHAPE))


def test_weights_hash_covers_the_external_data(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    h0 = weights_hash(onnx)
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    h1 = weights_hash(onnx)
    (tmp_path / "m.onnx.data").write_bytes(b"weights2")
    assert len({h0, h1, weights_hash(onnx)}) == 3 and weights_hash(onnx) == weights_hash(onnx)


def test_cache_hit_needs_no_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    onnx = write_export(tmp_path / "m.onnx", ExportInfo(SHAPE))
    profiles = [profile_for_kind(kind(1, 21), SHAPE)]
    key = CacheKey.make(weights_hash(onnx), profiles, "bfloat16", "sm_90", H100, VERSIONS)  # the default dtype
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / key.filename()).write_bytes(b"engine")
    gpu = dict(arch="sm_90", device_name=H100, versions=VERSIONS)
    plan = build_engine(onnx, profiles, cache_dir=tmp_path / "cache", **gpu)
    assert plan.read_bytes() == b"engine"
    with pytest.raises(ImportError, match="pip install tensorrt"):  # a miss has to build
        build_engine(onnx, profiles, cache_dir=tmp_path / "cache", **{**gpu, "device_name": "NVIDIA H200"})
    with pytest.raises(ConfigError, match="dtype"):
        build_engine(onnx, profiles, cache_dir=tmp_path, dtype="int4", **gpu)


def test_build_checks_the_profiles_before_importing_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx = write_export(tmp_path / "m.onnx", ExportInfo(SHAPE))  # batch 2 only
    profiles = profiles_for_kinds([kind(1, 21), kind(2, 21)], SHAPE)
    with pytest.raises(ConfigError, match=r"profile 'b4f21', input 'x', axis batch: .* dynamic_batch"):
        build_engine(onnx, profiles, cache_dir=tmp_path, arch="sm_90", device_name=H100, versions=VERSIONS)
    onnx = write_export(tmp_path / "m.onnx", ExportInfo(SHAPE, dynamic_batch=(2, 4)))
    with pytest.raises(ImportError, match="pip install tensorrt"):  # they fit: on to TensorRT
        build_engine(onnx, profiles, cache_dir=tmp_path, arch="sm_90", device_name=H100, versions=VERSIONS)


def test_missing_tensorrt_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError) as info:
        require_tensorrt()
    assert str(info.value) == INSTALL_HINT and "pip install tensorrt" in INSTALL_HINT


@pytest.mark.trt
@pytest.mark.gpu
def test_tensorrt_engine_matches_eager(tmp_path):
    pytest.importorskip("onnxscript")
    from miga_fast.export.onnx import export_onnx, infer_shape
    from miga_fast.export.tensorrt import TRTDenoiser
    from miga_fast.models.wan import WanConfig, WanDiT

    model = WanDiT(WanConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                             out_channels=4, text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1)).eval()
    shape = infer_shape(model, batch=2, frames=4, height=4, width=4, text_len=3)
    path = export_onnx(model, shape, tmp_path / "wan.onnx", dynamic_frames=(2, 8))
    profiles = [static_profile("b2f4", shape.shapes()), dynamic_frames_profile(shape, 2, 8)]
    trt = TRTDenoiser(build_engine(path, profiles, cache_dir=tmp_path, dtype="float32"), profiles)
    model = model.cuda()
    for frames in (4, 6):
        x, t, c = (v.cuda() for v in shape.example(frames))
        with torch.no_grad():
            torch.testing.assert_close(trt(x, t, c), model(x, t, c), rtol=1e-3, atol=1e-3)
