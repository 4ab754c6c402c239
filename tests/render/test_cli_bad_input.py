"""Every `miga-fast render` argument's bad values (NaN, inf, 0, negative, huge, wrong type, unknown names) give one
line on stderr naming the argument, exit status 2, no traceback and no file written."""

import subprocess
import sys

import pytest

from miga_fast.cli import main
from tests.tiny_model import PROMPT

CASES = [  # (arguments, what the one line must name)
    *[(["--guidance", v], "--guidance") for v in ("inf", "nan", "-1", "1e9", "abc")],
    *[(["--device", v], "--device") for v in ("cuda", "cuda:3", "bogus", "meta")],
    *[(["--fps", v], "--fps") for v in ("0", "-1", "100000", "abc", "1.5")],
    *[(["--scale", v], "--scale") for v in ("0", "-2", "1000", "x")],
    *[(["--frames", v], "--frames") for v in ("0", "-5", "1000000000000", "abc")],
    *[(["--steps", v], "--steps") for v in ("0", "-1", "100000", "2.5")],
    *[(["--seed", v], "--seed") for v in ("-1", str(2**64), "abc")],
    *[(["--size", v], "--size") for v in ("0x0", "33x32", "abc", "99999x32", "-32x32")],
    *[(["--checkpoint-every", v], "--checkpoint-every") for v in ("-1", "abc")],
    (["--mode", "bogus"], "--mode"),
    (["--engine", "bogus"], "--engine"),
    (["--engine", "graph"], "graph"),
    (["--dtype", "float8"], "--dtype"),
    (["--prompt-schedule", "no colon here"], "prompt schedule"),
    (["--prompt-schedule", "5:a red circle moving left on a striped blue background"], "frame 0"),
    (["--negative-prompt", "a violet circle"], "violet"),
    (["--model", "/nonexistent/model.safetensors"], "/nonexistent"),
    (["--set", "nothing"], None),  # --set is a trace/plan option: argparse rejects it for render
    (["--resume", "-o", "{tmp}/x.gif"], ".mp4"),
    (["--fps", "0", "-o", "{tmp}/x.gif"], "--fps"),
    (["-o", "{tmp}/x.avi"], ".mp4"),
    (["-o", "{tmp}/missing/x.mp4"], "does not exist"),
    (["--mode", "miga", "--steps", "3"], None),  # a plan config the preset cannot run
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_render_argument_is_one_line_exit_2_nothing_written(args, needle, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["render", PROMPT, "--frames", "4", "-o", str(tmp_path / "out.mp4"), *args]
    if "--prompt-schedule" in args:
        argv.remove(PROMPT)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("miga-fast: error: "), err
    if needle:
        assert needle in err, err
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_an_unknown_prompt_word_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "a violet circle moving left on a striped blue background", "-o", str(tmp_path / "o.mp4")])
    assert exc.value.code == 2 and "violet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_no_traceback_from_the_real_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "miga_fast.cli", "render", PROMPT, "--guidance", "inf", "--device",
                           "cpu", "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--guidance" in proc.stderr
