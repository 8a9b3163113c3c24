"""One intra-op thread per test (tiny models; the torchrun workers get OMP_NUM_THREADS=1 as well)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
