"""Single-process behaviour of the parallel helpers: mode resolution, eval sharding with target-free padding,
and wrappers that are no-ops without a process group.
Run: pytest tests/parallel/test_data_parallel.py"""

from __future__ import annotations

import pytest
import torch

from xinzhou.data.packing import pack_documents
from xinzhou.parallel.data_parallel import (
    gradient_sync,
    parallelize,
    resolve_mode,
    unwrap,
)
from xinzhou.parallel.dist import DistInfo, all_reduce_sum, init_distributed
from xinzhou.train.run import shard_eval


def test_resolve_mode():
    assert resolve_mode("auto", 1) == "none" and resolve_mode("auto", 2) == "ddp"
    assert resolve_mode("fsdp", 4) == "fsdp" and resolve_mode("fsdp", 1) == "none"
    with pytest.raises(ValueError, match="parallel mode must be one of"):
        resolve_mode("tp", 2)
    with pytest.raises(ValueError, match="parallel='none' but 2 processes"):
        resolve_mode("none", 2)


def test_single_process_is_plain(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.distributed
    model = torch.nn.Linear(2, 2)
    assert parallelize(model, "none", info) is model and unwrap(model) is model
    with gradient_sync(model, False):
        pass
    assert torch.equal(all_reduce_sum(torch.ones(2)), torch.ones(2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="inconsistent launcher environment"):
        init_distributed("cpu")


def test_shard_eval_pads_without_targets():
    batch = pack_documents([list(range(3, 40)), list(range(5, 30))], 16, bos_id=1, eos_id=2)
    assert batch.batch_size == 5
    shards = [shard_eval(batch, DistInfo(rank=r, world_size=2), 2) for r in range(2)]
    assert [len(s) for s in shards] == [2, 2]  # 5 rows -> 8 = 2 processes x 2 micro-batches x 2 rows
    targets = sum(int((b.labels != -100).sum()) for s in shards for b in s)
    assert targets == batch.num_targets
    assert all(len(b.cu_seqlens) == b.batch_size for s in shards for b in s)
