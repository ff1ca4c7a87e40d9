"""Under torchrun: a micro-batch empty on one rank is skipped by every rank (tests/test_ddp.py).

Each rank reports what ``_every_rank_has_data`` says for (its batch size): rank 1's batch is
empty in the second round. Rank 0 writes the answers to the path given.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from composir.train.loop import DistInfo, _every_rank_has_data

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
info = DistInfo(rank, world, rank)
rounds = [{"size": 4}, {"size": 0 if rank == 1 else 4}, {"size": 4}]
answers = [_every_rank_has_data(batch, info, torch.device("cpu")) for batch in rounds]
if rank == 0:
    with open(sys.argv[1], "w") as handle:
        json.dump(answers, handle)
dist.barrier()
dist.destroy_process_group()
# As in ddp_gradients.py: no C++ static destructors at exit (a gloo thread can abort a finished rank).
sys.stdout.flush()
os._exit(0)
