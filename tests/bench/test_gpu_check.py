"""bench/gpu_check.py dry-runs on the CPU: every step runs at toy size, the report is written, errors are clear."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def gpu_check(*args):
    return subprocess.run([sys.executable, "bench/gpu_check.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_dry_run_writes_the_report(tmp_path):
    out = gpu_check(tmp_path / "gpu", "--dry-run", "--budget-s", "400")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu" / "report.json").read_text())
    names = [s["name"] for s in report["steps"]]
    assert names[:2] == ["env", "tests"] and sum(n.startswith("ops-") for n in names) == 4
    assert "engine" in names and "render" in names
    assert all(s["ok"] for s in report["steps"]) and report["dry_run"] and "torch" in report["env"]
    md = (tmp_path / "gpu" / "report.md").read_text()
    assert "| tests | ok |" in md and "max_abs_err_vs_ref" in md and "gated_residual.csv" in md
    assert "engine/step.csv" in md and "eager_median_ms" in md and "denoiser_ms" in md
    assert (tmp_path / "gpu" / "ops-float32" / "adaln_modulate.csv").is_file()


def test_budget_runs_out_and_is_recorded(tmp_path):
    out = gpu_check(tmp_path / "gpu", "--dry-run", "--budget-s", "6")
    report = json.loads((tmp_path / "gpu" / "report.json").read_text())
    assert out.returncode == 1 and any(s["status"] in ("no time left", "timeout") for s in report["steps"])


def test_without_cuda_it_asks_for_dry_run(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real check would run")
    out = gpu_check(tmp_path / "gpu")
    assert out.returncode == 2 and "use --dry-run" in out.stderr
    assert gpu_check(tmp_path / "gpu", "--budget-s", "0").returncode == 2
