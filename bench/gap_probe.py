"""The train-inference gap probe alone, on one bundled-model file (`miga_fast.quality.gap`).

    OMP_NUM_THREADS=1 python bench/gap_probe.py --model FILE [--clips 16] --out DIR

Writes DIR/gap_rows.csv (one row per clip, pattern and start level), DIR/gap.csv (per pattern: mixed vs matched
flat error, ratio with a 95% bootstrap interval over clips), DIR/gap.md (that table) and DIR/gap_vs_span.png.
The error is the model's own training objective (flow or epsilon MSE) at its presets' solver levels, so a DiT
and a UNet are each probed in their own setting. `miga-fast eval --study` runs the same probe after its renders.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_csv  # noqa: E402

from miga_fast.models.tiny.bundle import TinyVideoModel  # noqa: E402
from miga_fast.quality.gap import probe_gap, summarise_gap  # noqa: E402
from miga_fast.quality.study import gap_table, plot_gap  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="bundled-model .safetensors file")
    p.add_argument("--clips", type=int, default=16, help="held-out world clips")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny windows: extra threads only spin on a shared 2-core box
    model = TinyVideoModel.load(args.model).eval()
    start = time.perf_counter()
    rows = probe_gap(model, clips=args.clips)
    summary = summarise_gap(rows)
    minutes = (time.perf_counter() - start) / 60
    write_csv(args.out / "gap_rows.csv", rows)
    write_csv(args.out / "gap.csv", summary)
    plot_gap(summary, args.out / "gap_vs_span.png")
    spec = model.spec
    lines = [f"# Gap probe: {args.model} (arch {spec.arch}, {spec.prediction} prediction, "
             f"{model.metadata.get('steps', '?')} steps)", "",
             f"`OMP_NUM_THREADS=1 python bench/gap_probe.py --model {args.model} --clips {args.clips} --out {args.out}`"
             f" ({minutes:.1f} min). Ratio: the model's training MSE on windows mixing levels over the same frames "
             "at the same levels in flat windows (> 1: the mix hurts), 95% bootstrap interval over clips.", "",
             *gap_table(summary)]
    (args.out / "gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
