"""bench/gap_probe.py: the gap probe alone, on a UNet (epsilon, DDIM) model file, writes its table and plot."""

import csv

import torch

from bench import gap_probe
from miga_fast.models.tiny.bundle import VC2_TINY_UNET, TinySpec, TinyVideoModel


def test_gap_probe_writes_its_files_for_a_unet(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "unet.safetensors"
    TinyVideoModel(TinySpec.vc2(frame_size=8, text_dim=16, unet={**VC2_TINY_UNET, "context_dim": 16})).save(path)
    gap_probe.main(["--model", str(path), "--clips", "1", "--out", str(tmp_path / "gap")])
    with open(tmp_path / "gap" / "gap.csv") as f:
        rows = {r["pattern"]: r for r in csv.DictReader(f)}
    assert float(rows["flat"]["ratio"]) == 1.0 and float(rows["fifo diagonal"]["ratio"]) > 0
    assert "eps prediction" in (tmp_path / "gap" / "gap.md").read_text()
    assert (tmp_path / "gap" / "gap_vs_span.png").stat().st_size > 0
