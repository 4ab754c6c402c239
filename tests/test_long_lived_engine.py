"""A generator keeps its engines: a second video allocates nothing, compiles nothing and equals a fresh one."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from miga_fast.pipeline import VideoGenerator, load
from miga_fast.runtime.compile_cache import is_warm
from tests.tiny_model import PROMPT

OTHER = "a blue square moving up on a plain red background"
SMALL = dict(steps=8, overrides=dict(window=4, zigzag=2, guidance_frames=1, stride=2, end_level=2, refine_level=2,
                                     reflection=False))


def video(gen, prompt, seed, engine_mode, mode="miga-stream", frames=6):
    return np.stack(list(gen.stream(prompt, frames=frames, mode=mode, seed=seed, engine_mode=engine_mode, **SMALL)))


@pytest.mark.parametrize("engine_mode", ["eager", "compile"])
def test_second_video_reuses_buffers_and_code_and_equals_a_fresh_generator(weights, engine_mode):
    gen = load(weights)
    first = video(gen, PROMPT, 1, engine_mode)
    (engine,) = gen.engines
    pointers, kinds = engine.pointers(), dict(engine.step_kinds)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = video(gen, OTHER, 2, engine_mode)  # another prompt and seed: the same buffers and code
    assert gen.engines == [engine] and engine.pointers() == pointers
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled for the second video
    assert engine.step_kinds.keys() == kinds.keys()
    if engine_mode == "compile":
        assert len(engine.runner.compile_seconds) == len(kinds)  # compiled once per kind, in the first video
    # a compiled render leaves a warm marker: a later process's mode "auto" counts on the on-disk cache
    req = gen.request(PROMPT, frames=6, mode="miga-stream", engine_mode=engine_mode, **SMALL)
    assert is_warm(gen._compile_key(req)) == (engine_mode == "compile")
    fresh = video(load(weights), OTHER, 2, engine_mode)
    assert np.array_equal(second, fresh)
    assert not np.array_equal(first, second)


def test_engine_cache_is_bounded_and_released(weights):
    gen = load(weights)
    gen.max_engines = 2
    for mode in ("fifo", "miga", "miga-stream"):
        video(gen, PROMPT, 0, "eager", mode=mode, frames=4)
    assert [e.cfg.mode for e in gen.engines] == ["miga", "miga-stream"]  # least recently used left first
    video(gen, PROMPT, 0, "eager", mode="miga", frames=4)
    assert [e.cfg.mode for e in gen.engines] == ["miga-stream", "miga"]
    gen.release()
    assert gen.engines == []


def test_an_abandoned_stream_leaves_a_reusable_engine(weights):
    gen = load(weights)
    stream = gen.stream(PROMPT, frames=6, seed=3, **SMALL)
    next(stream)
    other = video(gen, PROMPT, 3, "eager")  # the first stream still holds its engine: this one gets its own
    stream.close()
    assert len(gen.engines) == 1
    assert np.array_equal(video(gen, PROMPT, 3, "eager"), other)


def test_max_engines_is_validated(weights):
    from miga_fast import ConfigError

    with pytest.raises(ConfigError, match="max_engines"):
        VideoGenerator(load(weights).bundle, max_engines=-1)
