"""Job files: every bad line reported with its number before anything renders (JSONL and CSV), the CLI's
compiler-style listing, --skip-invalid."""

import subprocess
import sys

import pytest

from miga_fast import batch
from miga_fast.jobs import JobFileError, read_jobs

from .conftest import ENV

GOOD = '{"id": "ok", "prompt": "a red circle moving left on a striped blue background", "frames": 16}'
BAD = [
    ('{"prompt": "a red circle", "frames": 16', "not valid JSON"),
    ('{"prompt": "a red circle moving left on a striped blue background", "fram": 3}', "unknown key 'fram'"),
    ('{"prompt": "a red circle moving left on a striped blue background", "frames": 0}',
     "frames must be an integer in"),
    ('{"prompt": "a zebra moving left on a striped blue background", "frames": 16}', "does not know: ['zebra']"),
    ('{"id": "ok", "prompt": "a red circle moving left on a striped blue background", "frames": 8}',
     "duplicate id 'ok' (first on line 1)"),
    ('[1, 2]', "a job must be a JSON object"),
    ('{"prompt": "a red circle moving left on a striped blue background", "frames": "many"}',
     "frames must be an integer"),
    ('{"frames": 16}', "exactly one of prompt and prompt_schedule"),
    ('{"prompt": "a red circle moving left on a striped blue background", "size": "32by32"}', "size must be 'HxW'"),
    ('{"prompt": "a red circle moving left on a striped blue background", "mode": "zigzag"}', "mode must be one of"),
    ('{"prompt": "a red circle moving left on a striped blue background", "id": "../etc"}', "id must be"),
]


@pytest.mark.parametrize("line,message", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_line_is_named_with_its_number(model, tmp_path, line, message):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(f"{GOOD}\n\n# a comment\n{line}\n")
    with pytest.raises(JobFileError) as err:
        batch.run(jobs, tmp_path / "out", model=str(model), progress=False)
    assert [n for n, _ in err.value.problems] == [4]
    assert err.value.lines()[0].startswith(f"{jobs}:4: ") and message in err.value.lines()[0]
    assert not (tmp_path / "out").exists()  # nothing rendered, no folder made


def test_csv_jobs_and_their_line_numbers(tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("id,prompt,frames,seed,size\n"
                    "a,a red circle moving left on a striped blue background,16,1,32x32\n"
                    "b,a red circle moving left on a striped blue background,-3,1,32x32\n"
                    "c,a red circle moving left on a striped blue background,16,1,32x32,extra\n")
    with pytest.raises(JobFileError) as err:
        read_jobs(jobs)
    assert [n for n, _ in err.value.problems] == [4]  # frames -3 is the model's check (below)
    good, problems = read_jobs(jobs, skip_invalid=True)
    assert [j.id for j in good] == ["a", "b"] and good[0].args == dict(
        prompt="a red circle moving left on a striped blue background", frames=16, seed=1, size=(32, 32))


def test_cli_lists_every_bad_line_and_renders_nothing(model, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([GOOD] + [line for line, _ in BAD]) + "\n")
    out = subprocess.run([sys.executable, "-m", "miga_fast.cli", "batch", str(jobs), "-o", str(tmp_path / "out"),
                          "--model", str(model)], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    listed = [line for line in out.stderr.splitlines() if line.startswith(f"{jobs}:")]
    assert [int(line.split(":")[1]) for line in listed] == list(range(2, 2 + len(BAD)))
    assert f"{len(BAD)} bad job(s); nothing was rendered" in out.stderr and not (tmp_path / "out").exists()


def test_skip_invalid_renders_the_rest(model, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(f"{GOOD}\n{BAD[2][0]}\n")
    rows = batch.run(jobs, tmp_path / "out", model=str(model), progress=False, skip_invalid=True)
    assert [r["id"] for r in rows] == ["ok"] and (tmp_path / "out" / "ok.mp4").is_file()


def test_bad_run_arguments(model, tmp_path):
    for kwargs, match in ((dict(workers=0), "workers"), (dict(pack=0), "pack"),
                          (dict(checkpoint_every=-1), "checkpoint_every")):
        with pytest.raises(Exception, match=match):
            batch.run(tmp_path / "jobs.jsonl", tmp_path / "out", model=str(model), **kwargs)
    with pytest.raises(Exception, match="job file must be .jsonl or .csv"):
        batch.run(tmp_path / "jobs.txt", tmp_path / "out", model=str(model))
    with pytest.raises(Exception, match="does not exist"):
        batch.run(tmp_path / "missing.jsonl", tmp_path / "out", model=str(model))
