"""bench/overhead.py at toy size: every column is written, and the engine-only run costs less than the real one."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_reports_engine_only_time(tmp_path):
    out = subprocess.run([sys.executable, "bench/overhead.py", "--modes", "fifo", "--providers", "baseline,eager",
                          "--frames", "4", "--steps", "8", "--repeats", "1", "--warmup", "0", "--out-dir", tmp_path],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "overhead.csv")))
    assert [r["provider"] for r in rows] == ["baseline", "eager"]
    for r in rows:
        free, run = float(r["engine_only_ms"]), float(r["run_ms"])
        # a free denoiser leaves only the provider's own work: far less than a run with the model
        assert 0 < free < run and 0 < float(r["engine_only_fraction"]) < 1
    assert "engine only" in out.stdout
