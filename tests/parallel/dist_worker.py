"""Started by torchrun from test_dist_parity.py: the same `pretrain` entry point, once with DDP and once with
FSDP2, on CPU with gloo. Arguments: OUT_DIR CORPUS MAX_STEPS MODE [MODE ...]."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from train_helpers import debug_config  # noqa: E402

from xinzhou.parallel.dist import destroy_distributed  # noqa: E402
from xinzhou.train.pretrain import pretrain  # noqa: E402

out, corpus, steps, *modes = sys.argv[1:]
for mode in modes:
    pretrain(debug_config(Path(out) / mode, corpus, parallel=mode, max_steps=int(steps), eval_every=int(steps) // 2,
                          save_every=int(steps), export=mode == "fsdp"))
destroy_distributed()
