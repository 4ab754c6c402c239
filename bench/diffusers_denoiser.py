"""Which denoiser should MigaWanPipeline run: our WanDiT over diffusers' parameters, or diffusers' own forward?

    python bench/diffusers_denoiser.py [--repeats 7 --warmup 2 --threads 1]

Both run one engine window call on the same random WanTransformer3DModel (a small Wan config: 2 blocks, width 256,
16 latent channels, 512 text tokens), CFG batch 2, one timestep per latent frame:
  * "miga":      `wan_dit_from_diffusers(transformer).denoise` (per-frame adaLN [B, F, 6, dim], shared parameters);
  * "diffusers": `DiffusersWanDenoiser(transformer).denoise` (t expanded to [B, tokens]: diffusers' per-token path).
Interleaved in one process, median of `--repeats` runs after `--warmup`; the ratio is diffusers / miga time.
Writes bench/results/diffusers/denoiser.csv (one row per shape) and prints it.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miga_fast.models.load import DiffusersWanDenoiser, wan_dit_from_diffusers  # noqa: E402
from miga_fast.models.wan import per_frame_modulation_bytes, per_token_modulation_bytes  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "diffusers" / "denoiser.csv"
CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
              text_dim=64, freq_dim=256, ffn_dim=1024, num_layers=2)
# (latent frames, latent H, latent W): a Wan window of 21 latents at 1/16 and 1/64 of 480p's 60 x 104 latents
SHAPES = [(21, 16, 26), (21, 8, 12)]


def timed(fn, *args) -> float:
    """Wall-clock seconds of one call fn(*args)."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (this CPU is shared: default 1)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**CONFIG).eval()
    paths = {"miga": wan_dit_from_diffusers(transformer).denoise,
             "diffusers": DiffusersWanDenoiser(transformer).denoise}
    rows = []
    for f, h, w in SHAPES:
        x = torch.randn(2, CONFIG["in_channels"], f, h, w)
        t = torch.linspace(999, 0, f).expand(2, f).contiguous()  # staggered levels, as a FIFO window
        cond = torch.randn(2, 512, CONFIG["text_dim"])
        outs = {name: fn(x, t, cond) for name, fn in paths.items()}
        err = float((outs["miga"] - outs["diffusers"]).abs().max())
        for _ in range(args.warmup):
            for fn in paths.values():
                fn(x, t, cond)
        times = {name: [] for name in paths}
        for _ in range(args.repeats):  # interleaved: drifts of a shared CPU hit both alike
            for name, fn in paths.items():
                times[name].append(timed(fn, x, t, cond))
        med = {name: statistics.median(v) for name, v in times.items()}
        dim = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
        rows.append({
            "shape": f"x[2,{CONFIG['in_channels']},{f},{h},{w}]", "tokens": f * (h // 2) * (w // 2),
            "miga_ms": round(med["miga"] * 1e3, 2), "diffusers_ms": round(med["diffusers"] * 1e3, 2),
            "ratio_diffusers_over_miga": round(med["diffusers"] / med["miga"], 3), "max_abs_diff": f"{err:.2e}",
            "modulation_bytes_miga": per_frame_modulation_bytes(2, f, h, w, (1, 2, 2), dim, 4),
            "modulation_bytes_diffusers": per_token_modulation_bytes(2, f, h, w, (1, 2, 2), dim, 4),
            "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row)
    return rows


if __name__ == "__main__":
    main()
