"""The GPU check: one script for a CUDA machine with torch and Triton preinstalled and nothing installable.

    PYTHONPATH=. python bench/gpu_check.py OUT_DIR [--budget-s 480]     # on the GPU machine, from the repo root
    python bench/gpu_check.py OUT_DIR --dry-run                           # CPU: every step at toy size

Runs, each as a subprocess with its own time limit inside the budget, output kept:
  1. env       torch / Triton / CUDA versions, the GPU's name, memory and compute capability;
  2. tests     the gpu-marked tests (`pytest -m gpu`), Triton compiling real kernels (TRITON_INTERPRET unset);
  3. ops-D     every fused op (adaln_modulate, gated_residual, hetero_attention, solver_update) vs its reference
               and torch.compile at Wan2.1-1.3B 480p shapes (`--all`) in D = bfloat16, then float16: max |error|
               vs the reference, median time, GB/s or TFLOP/s (`bench/bench_<op>.py`);
  4. engine    the engine per step kind on a Wan2.1-1.3B-width DiT at 480p (random weights, 2 blocks), modes
               eager vs CUDA graph, then eager vs compile: equality with eager, per-call time next to the bare
               denoiser (replay overhead), first call (capture / compile), peak memory per call and its spread
               across calls (flat = 0) (`bench/bench_step.py --cases wan13b-miga-stream`);
  5. render    the bundled model, 256 frames, fifo and miga-stream, baseline loop vs engine eager / compile /
               CUDA graph: frames/s and peak memory per executor (`bench/fps_memory.py`).
Writes OUT_DIR/report.json (every step: command, exit status, seconds, output tail, CSVs) and OUT_DIR/report.md
(the CSVs as tables), and the steps' CSVs under OUT_DIR/. A step that fails or runs out of time is recorded
and the next one runs; the exit status is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ("adaln_modulate", "gated_residual", "hetero_attention", "solver_update")
ENV_PROBE = """
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                sms=p.multi_processor_count)
print(json.dumps(info))
"""


def steps(out: Path, dry_run: bool) -> list[tuple[str, list[str], dict, float]]:
    """(name, command, extra environment, share of the budget) per step."""
    py = sys.executable
    plan = [("env", [py, "-c", ENV_PROBE], {}, 0.02)]
    if dry_run:  # the same steps at toy size on the CPU: the script's plumbing, not the GPU's numbers
        plan.append(("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "--collect-only", "tests"], {}, 0.2))
        for op in OPS:
            plan.append((f"ops-float32-{op}", [py, f"bench/bench_{op}.py", "--providers", "ref", "--seconds",
                                               "0.01"], {"MIGA_BENCH_RESULTS": str(out / "ops-float32")}, 0.1))
        plan.append(("engine", [py, "bench/bench_step.py", "--cases", "wan-miga-stream", "--modes", "eager"],
                     {"MIGA_BENCH_RESULTS": str(out / "engine")}, 0.1))
        plan.append(("render", [py, "bench/fps_memory.py", "--quick", "--modes", "fifo", "--engines", "eager",
                                "--frames", "8", "--repeats", "1", "--warmup", "0", "--no-isolate",
                                "--device", "cpu", "--out-dir", str(out / "render")], {}, 0.3))
        return plan
    plan.append(("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"], {}, 0.2))
    for dtype in ("bfloat16", "float16"):  # bf16 first: no kernel's bf16 path has executed before a GPU run
        for op in OPS:
            plan.append((f"ops-{dtype}-{op}", [py, f"bench/bench_{op}.py", "--all", "--dtype", dtype, "--seconds",
                                                "0.5"], {"MIGA_BENCH_RESULTS": str(out / f"ops-{dtype}")}, 0.035))
    # the engine per step kind on a Wan2.1-1.3B-width DiT at 480p (random weights, 2 of 30 blocks): graph first,
    # then compile (cold compiles of 4 kinds), each its own step so a slow compile cannot cost the graph numbers
    for modes in ("eager,graph", "eager,compile"):
        name = "engine-" + modes.split(",")[1]
        plan.append((name, [py, "bench/bench_step.py", "--cases", "wan13b-miga-stream", "--modes", modes, "--device",
                            "cuda", "--dtype", "bfloat16", "--layers", "2"],
                     {"MIGA_BENCH_RESULTS": str(out / name)}, 0.08))
    for mode in ("fifo", "miga-stream"):  # one step each: a timeout loses one mode's CSV, not both
        plan.append((f"render-{mode}", [py, "bench/fps_memory.py", "--modes", mode, "--engines",
                                        "baseline,eager,compile,graph", "--frames", "256", "--repeats", "2",
                                        "--warmup", "1", "--device", "cuda", "--out-dir", str(out / f"render-{mode}")],
                     {}, 0.16))
    return plan


def run_step(name: str, cmd: list[str], extra_env: dict, limit: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", **extra_env)
    if name == "tests":
        env.pop("TRITON_INTERPRET", None)  # real kernels on the GPU (tests/conftest.py sets it only without CUDA)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(limit, 5))
        status, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = "timeout"
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    seconds = round(time.perf_counter() - start, 1)
    print(f"[{name}] {status} in {seconds} s", flush=True)
    return {"name": name, "command": " ".join(cmd), "status": status, "ok": status == 0, "seconds": seconds,
            "limit_s": round(limit, 1), "output_tail": output[-4000:]}


def markdown(report: dict, out: Path) -> str:
    lines = [f"# GPU check ({'dry run on CPU' if report['dry_run'] else 'CUDA'})", "",
             f"`{report['command']}`, {report['seconds']} s of a {report['budget_s']} s budget.", ""]
    if report.get("env"):
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in report["env"].items()), ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {'ok' if s['ok'] else s['status']} | {s['seconds']} |" for s in report["steps"]]
    for path in sorted(out.rglob("*.csv")):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        keep = [k for k in rows[0] if k in ("op", "config", "shape", "dtype", "provider", "median_ms", "metric",
                                            "value", "max_abs_err_vs_ref", "mode", "engine", "frames",
                                            "fps_e2e", "fps", "peak_rss_mb", "peak_cuda_mb", "skipped", "kind",
                                            "calls", "denoiser_ms")
                or k.endswith(("_first_s", "_median_ms", "_rel_err", "_peak_mb", "_peak_spread_mb"))]
        keep = keep or list(rows[0])[:8]
        lines += ["", f"## {path.relative_to(out)}", "", "| " + " | ".join(keep) + " |",
                  "|" + "---|" * len(keep)]
        lines += ["| " + " | ".join(str(r.get(k, "")) for k in keep) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="folder for report.json, report.md and the CSVs")
    p.add_argument("--budget-s", type=float, default=480.0, help="total seconds for all steps (default 480)")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (tests the script itself)")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s must be positive (got {args.budget_s})")
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start, results, env = time.perf_counter(), [], {}
    plan = steps(out, args.dry_run)
    for name, cmd, extra, share in plan:
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 5:
            results.append({"name": name, "command": " ".join(cmd), "status": "no time left", "ok": False,
                            "seconds": 0.0, "limit_s": 0.0, "output_tail": ""})
            continue
        result = run_step(name, cmd, extra, min(left, share * args.budget_s))
        if name == "env" and result["ok"]:
            env = json.loads(result["output_tail"].strip().splitlines()[-1])
            if not args.dry_run and not env.get("cuda_available"):
                print("no CUDA device: use --dry-run on a CPU machine", file=sys.stderr)
                return 2
        results.append(result)
    report = {"command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "dry_run": args.dry_run, "budget_s": args.budget_s, "seconds": round(time.perf_counter() - start, 1),
              "env": env, "steps": results}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report, out))
    print(f"wrote {out / 'report.json'} and report.md")
    return 0 if all(s["ok"] for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
