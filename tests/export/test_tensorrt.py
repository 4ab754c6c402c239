"""TensorRT export: profiles per step kind, shape selection, engine cache keys (pure Python); GPU parts skip."""

import sys

import pytest
import torch

from miga_fast import ConfigError
from miga_fast.export.onnx import DenoiserShape
from miga_fast.export.tensorrt import (
    INSTALL_HINT,
    CacheKey,
    Profile,
    build_engine,
    dynamic_frames_profile,
    profile_for_kind,
    profiles_for_kinds,
    require_tensorrt,
    select_profile,
    static_profile,
    weights_hash,
)
from miga_fast.runtime.step import StepKey

SHAPE = DenoiserShape(batch=2, channels=16, frames=21, height=60, width=104, text_len=512, text_dim=4096)
VERSIONS = {"tensorrt": "10.3.0", "cuda": "12.4", "torch": "2.5.0"}


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
    base = CacheKey.make("w" * 64, profiles, "float16", "sm_90", VERSIONS)
    assert base.digest() == CacheKey.make("w" * 64, list(profiles), "float16", "sm_90",
                                          dict(reversed(VERSIONS.items()))).digest()
    variants = [
        CacheKey.make("v" * 64, profiles, "float16", "sm_90", VERSIONS),
        CacheKey.make("w" * 64, [profile_for_kind(kind(2, 21), SHAPE)], "float16", "sm_90", VERSIONS),
        CacheKey.make("w" * 64, profiles + [profile_for_kind(kind(2, 21), SHAPE)], "float16", "sm_90", VERSIONS),
        CacheKey.make("w" * 64, profiles, "bfloat16", "sm_90", VERSIONS),
        CacheKey.make("w" * 64, profiles, "float16", "sm_89", VERSIONS),
        CacheKey.make("w" * 64, profiles, "float16", "sm_90", {**VERSIONS, "tensorrt": "10.4.0"}),
        CacheKey.make("w" * 64, profiles, "float16", "sm_90", {**VERSIONS, "cuda": "12.6"}),
    ]
    digests = {base.digest()} | {v.digest() for v in variants}
    assert len(digests) == len(variants) + 1
    assert base.filename().startswith("denoiser-sm_90-float16-") and base.filename().endswith(".plan")


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
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    profiles = [profile_for_kind(kind(1, 21), SHAPE)]
    key = CacheKey.make(weights_hash(onnx), profiles, "float16", "sm_90", VERSIONS)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / key.filename()).write_bytes(b"engine")
    plan = build_engine(onnx, profiles, cache_dir=tmp_path / "cache", arch="sm_90", versions=VERSIONS)
    assert plan.read_bytes() == b"engine"
    with pytest.raises(ImportError, match="pip install tensorrt"):  # a miss has to build
        build_engine(onnx, profiles, cache_dir=tmp_path / "cache", arch="sm_89", versions=VERSIONS)
    with pytest.raises(ConfigError, match="dtype"):
        build_engine(onnx, profiles, cache_dir=tmp_path, dtype="int4", arch="sm_90", versions=VERSIONS)


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
