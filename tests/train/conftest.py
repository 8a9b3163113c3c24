"""Fixtures for training tests: a small slice of the bundled corpus (written once per session), and one intra-op
thread per test: these models are tiny, and on a shared CPU two spinning threads per op cost several times more
than they save."""

from __future__ import annotations

import pytest
import torch
from train_helpers import write_small_corpus


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    return write_small_corpus(tmp_path_factory.mktemp("corpus") / "small.txt")


@pytest.fixture(autouse=True, scope="module")  # module scope: before the module-scoped runs below
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
