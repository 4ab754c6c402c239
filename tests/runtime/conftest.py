"""Fixtures of the runtime tests: a toy denoiser, and one torch thread for their millisecond-sized steps."""

import pytest
import torch

from miga_fast.models.toy import ToyDenoiser


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Millisecond-sized steps: on a busy 2-core box, OpenMP barriers across threads cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    return ToyDenoiser(channels=4, cond_dim=8).eval()
