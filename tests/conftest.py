"""Shared test setup for every test folder: deterministic seeds."""

from __future__ import annotations

import random

import pytest
import torch

@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    torch.manual_seed(0)
    yield
