"""bench/soak.py: the quick soak (toy model, a few hundred latents) passes; the verdicts catch growth and NaN."""

import csv

from bench import soak
from miga_fast.cli import main as cli_main


def test_quick_soak_passes(tmp_path):
    assert soak.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    with (tmp_path / "soak.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["latents"]) for r in rows] == list(range(20, 301, 20))
    assert all(r["finite"] == "True" and float(r["rss_mb"]) > 0 for r in rows)
    with (tmp_path / "soak_summary.csv").open() as f:
        summary = next(csv.DictReader(f))
    assert summary["memory_flat"] == summary["no_nan"] == "PASS" and summary["model"] == "toy"
    assert (tmp_path / "soak.png").stat().st_size > 10_000


def test_cli_bench_soak(tmp_path, capsys):
    assert cli_main(["bench", "soak", "--quick", "--latents", "40", "--every", "20", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "miga-fast bench soak --quick" in out and out.rstrip().endswith("PASS")


def _rows(rss, finite=True):
    return [{"latents": 100 * (i + 1), "rss_peak_interval_mb": v, "finite": finite} for i, v in enumerate(rss)]


def test_verdicts():
    flat = soak.verdicts(_rows([300, 310, 311, 311, 311.5, 311, 312, 311.8, 312]), 900, 0.1, 4.0,
                         "rss_peak_interval_mb")
    assert flat["memory_flat"] == "PASS" and flat["no_nan"] == "PASS"
    growing = soak.verdicts(_rows([300 + 3 * i for i in range(12)]), 1200, 0.1, 4.0, "rss_peak_interval_mb")
    assert growing["memory_flat"] == "FAIL" and growing["slope_mb_per_1000"] > 25
    nan = soak.verdicts(_rows([300] * 8, finite=False), 800, 0.1, 4.0, "rss_peak_interval_mb")
    assert nan["no_nan"] == "FAIL"
    short = soak.verdicts(_rows([300] * 3), 800, 0.1, 4.0, "rss_peak_interval_mb")  # stopped early
    assert short["no_nan"] == "FAIL"


def test_fault_soak_counts_lost_and_duplicated_frames():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(soak.__file__).parent))  # soak_faults imports its neighbour common.py
    from bench.soak_faults import align

    ref = list("abcdef")
    assert align(ref, ref) == (0, 0)
    assert align(ref, list("abdef")) == (1, 0)
    assert align(ref, list("abccdef")) == (0, 1)
    assert align(ref, list("abc")) == (3, 0)
    assert align(ref, list("abcdefx")) == (0, 1)


def test_quick_fault_soak_loses_nothing(tmp_path):
    assert soak.main(["--kill-every", "40", "--latents", "100", "--checkpoint-every", "16",
                      "--out-dir", str(tmp_path)]) == 0
    import json

    row = json.loads((tmp_path / "soak_faults.json").read_text())
    assert row["frames_lost"] == row["frames_duplicated"] == 0 and row["kills"] >= 1 and row["identical_file"]
