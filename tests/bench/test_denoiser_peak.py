"""bench/denoiser_peak.py counts CPU flash attention's FLOPs (torch's FlopCounterMode counts them as 0)."""

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import denoiser_peak


def test_cpu_attention_flops_are_counted():
    q, k, v = torch.randn(2, 4, 64, 24), torch.randn(2, 4, 12, 24), torch.randn(2, 4, 12, 16)
    denoiser_peak.count_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * 2 * 4 * 64 * 12 * (24 + 16)
