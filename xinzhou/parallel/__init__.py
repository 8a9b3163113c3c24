"""Training-side parallelism, applied from outside the single-device model: process groups (``dist.py``) and
data parallelism with DDP or FSDP2 (``data_parallel.py``). ``xinzhou/model`` never imports this package."""

from xinzhou.parallel.data_parallel import (
           gradient_sync,
           parallelize,
           resolve_mode,
           unwrap,
)
from xinzhou.parallel.dist import DistInfo, destroy_distributed, init_distributed

__all__ = ["DistInfo", "destroy_distributed", "gradient_sync", "init_distributed", "parallelize", "resolve_mode",
           "unwrap"]
