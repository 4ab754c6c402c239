"""Engine mode "auto": compile only when the render repays it, warm markers, the persistent inductor cache."""

import os

import pytest
import torch

from miga_fast.models.tiny.bundle import TinyVideoModel
from miga_fast.pipeline import load
from miga_fast.runtime import compile_cache
from miga_fast.runtime.compile_cache import BREAK_EVEN_FRAMES, choose_mode, engine_key, is_warm, mark_warm
from tests.tiny_model import PROMPT, TINY

WINDOW = dict(window=4, zigzag=2, guidance_frames=1, stride=2, end_level=2, refine_level=2, reflection=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGA_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", raising=False)
    return tmp_path / "cache"


def test_choose_mode_by_break_even():
    cpu = torch.device("cpu")
    cold, warm = BREAK_EVEN_FRAMES["cold"], BREAK_EVEN_FRAMES["warm"]
    assert warm < cold
    assert choose_mode(cpu, warm - 1, warm=True)[0] == "eager"
    assert choose_mode(cpu, warm, warm=True)[0] == "compile"
    assert choose_mode(cpu, cold - 1, warm=False) == ("eager", f"{cold - 1} frames < {cold}, the cold-start "
                                                      "break-even of compiling")
    assert choose_mode(cpu, cold, warm=False)[0] == "compile"
    assert choose_mode(torch.device("cuda"), 1, warm=False)[0] == "auto"  # graphs, decided by the engine


def test_markers(cache, monkeypatch):
    a, b = engine_key(model="M", cfg="x"), engine_key(model="M", cfg="y")
    assert a != b and a == engine_key(cfg="x", model="M")
    assert not is_warm(a)
    mark_warm(a, {"why": "test"})
    assert is_warm(a) and not is_warm(b) and (cache / "engines" / f"{a}.json").is_file()
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # caches off: every start is cold
    assert not is_warm(a)


def test_persistent_inductor_cache_folder(cache, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compile_cache.use_persistent_cache() == cache / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # an explicit choice wins
    assert str(compile_cache.use_persistent_cache()) == "/elsewhere"


def test_auto_picks_eager_then_compile_once_the_engine_is_warm(cache, tmp_path):
    torch.manual_seed(0)
    TinyVideoModel(TINY).save(tmp_path / "tiny.safetensors")
    gen = load(tmp_path / "tiny.safetensors")
    frames = BREAK_EVEN_FRAMES["warm"]
    req = gen.request(PROMPT, frames, steps=8, overrides=WINDOW)
    assert req.engine_mode == "auto"  # the default
    with gen.frame_stream(req) as stream:  # cold: short of the cold break-even
        assert stream.engine.mode == "eager" and "cold-start" in stream.engine.mode_why["auto"]
    mark_warm(gen._compile_key(req), {})  # as a finished compiled render of this engine leaves it
    with gen.frame_stream(req) as stream:
        assert stream.engine.mode == "compile" and "warm-start" in stream.engine.mode_why["auto"]
    other = gen.request(PROMPT, frames, steps=10, overrides=WINDOW)  # another plan: other compiled code
    with gen.frame_stream(other) as stream:
        assert stream.engine.mode == "eager"
    short = gen.request(PROMPT, 16, steps=8, overrides=WINDOW)
    with gen.frame_stream(short) as stream:
        assert stream.engine.mode == "eager"
