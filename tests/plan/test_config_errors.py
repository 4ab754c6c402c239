"""Bad configurations raise one ConfigError that names the argument and the allowed values."""

import json

import pytest

from miga_fast import ConfigError
from miga_fast.cli import main
from miga_fast.plan import make_plan, preset


@pytest.mark.parametrize("name,overrides,argument", [
    ("vc2-miga", dict(zigzag=3), "zigzag"),
    ("vc2-miga", dict(guidance_frames=16), "guidance_frames"),
    ("vc2-miga", dict(guidance_frames=20), "guidance_frames"),
    ("vc2-miga", dict(stride=13), "stride"),
    ("vc2-miga", dict(num_steps=8), "end_level"),
    ("vc2-miga", dict(refine_level=64), "refine_level"),
    ("vc2-miga", dict(reflection=True, judged_level=12), "judged_level"),
    ("vc2-miga", dict(reflection=True, reflect_blocks=4), "reflect_blocks"),
    ("vc2-miga", dict(mode="nope"), "mode"),
    ("vc2-miga", dict(solver="euler"), "solver"),
    ("vc2-miga-stream", dict(stream_context=16), "stream_context"),
    ("vc2-fifo", dict(num_steps=60), "num_steps"),
    ("vc2-fifo", dict(window=15, num_steps=45), "window"),
])
def test_bad_config_names_argument(name, overrides, argument):
    with pytest.raises(ConfigError, match=argument):
        preset(name, **overrides)


def test_unknown_field_and_preset():
    with pytest.raises(ConfigError, match="unknown configuration field"):
        preset("vc2-miga", zigzg=2)
    with pytest.raises(ConfigError, match="preset must be one of"):
        preset("vc3-miga")


@pytest.mark.parametrize("n", [0, -3])
def test_bad_latent_count(n):
    with pytest.raises(ConfigError, match="latents"):
        next(make_plan(preset("vc2-fifo"), n))


def test_offline_miga_needs_a_window_of_latents():
    with pytest.raises(ConfigError, match="miga-stream"):
        next(make_plan(preset("vc2-miga"), 8))
    next(make_plan(preset("vc2-miga-stream"), 8))  # the streaming mode accepts it


def test_cli_trace_prints_json_lines(capsys):
    assert main(["trace", "--preset", "vc2-fifo", "--latents", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == (2 + 64 - 16) * 8  # iterations x 2n windows
    first = json.loads(lines[0])
    assert first["phase"] == "fifo" and len(first["inputs"]) == 16 and len(first["writes"]) == 8


def test_cli_bad_input_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trace", "--preset", "vc2-miga", "--set", "zigzag=5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "zigzag (L_zig) must be a divisor of window f0=16 (got 5)" in err and "Traceback" not in err
