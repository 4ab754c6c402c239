"""bench/fps_memory.py: the Pareto front, and a --quick sweep writes the CSV (expected columns) and the PNG."""

import csv

from bench import fps_memory
from bench.fps_memory import COLUMNS, pareto_front


def test_pareto_front_hand_example():
    # (memory MB, frames/s); lower memory and higher fps are better
    points = [
        (100, 10.0),  # front: least memory
        (150, 9.0),  # dominated by (100, 10)
        (200, 20.0),  # front
        (200, 15.0),  # dominated by (200, 20): same memory, slower
        (300, 20.0),  # dominated by (200, 20): more memory, same speed
        (400, 30.0),  # front: fastest
        (400, 30.0),  # equal to the previous one: both on the front
        (None, 50.0),  # not measured: never on the front
    ]
    assert pareto_front(points) == [True, False, True, False, False, True, True, False]
    assert pareto_front([]) == []


def test_quick_sweep_writes_csv_and_png(tmp_path):
    code = fps_memory.main(["--quick", "--modes", "fifo,miga-stream", "--frames", "2", "--repeats", "1",
                            "--out-dir", str(tmp_path)])
    assert code == 0
    with (tmp_path / "fps_memory.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert set(COLUMNS) <= set(rows[0]) and {"machine", "torch", "cpu", "rss_source"} <= set(rows[0])
    got = {(r["mode"], r["engine"]): r for r in rows}
    assert set(got) == {(m, e) for m in ("fifo", "miga-stream") for e in ("baseline", "eager", "graph")}
    assert got["fifo", "graph"]["status"].startswith("skipped: CUDA graphs")
    for mode in ("fifo", "miga-stream"):
        eager, base = got[mode, "eager"], got[mode, "baseline"]
        assert eager["status"] == base["status"] == "ok"
        assert float(eager["fps_diffusion"]) > 0 and float(eager["fps_e2e"]) > 0
        assert float(eager["peak_mem_mb"]) > 0 and float(eager["speedup_vs_baseline"]) > 0
        # the baseline calls the model twice per window (CFG), the engine batches both and groups
        assert float(base["model_calls_per_frame"]) >= 2 * float(eager["model_calls_per_frame"])
        assert base["windows_per_frame"] == eager["windows_per_frame"]
    assert "fps_memory.py" in rows[0]["command"] or "miga-fast bench" in rows[0]["command"]
    assert any(r["pareto"] == "True" for r in rows)
    assert (tmp_path / "fps_memory.png").stat().st_size > 10_000


def test_isolated_configuration_runs_in_a_subprocess(tmp_path):
    """The default for real sweeps: each configuration in a fresh interpreter (its own peak RSS and compiles)."""
    assert fps_memory.main(["--quick", "--isolate", "--modes", "fifo", "--engines", "eager", "--frames", "2",
                            "--repeats", "1", "--out-dir", str(tmp_path)]) == 0
    with (tmp_path / "fps_memory.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok" and float(row["maxrss_mb"]) > 0 and row["steps"] == "8"
