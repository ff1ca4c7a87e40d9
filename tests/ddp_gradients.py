"""One training step's loss and gradients, for the DDP equality test (tests/test_ddp.py).

Run alone it computes them on the whole global batch; under torchrun each rank takes its slice
and DDP averages the gradients. Writes {"loss", "grads"} (rank 0) to the path given.

    python tests/ddp_gradients.py OUT.pt METHOD GATHER(0|1)
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from composir.encoders import build_encoder
from composir.methods import build_method

SMALL = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
TEXTS = ["make it red", "add a cat", "remove the square", "blue background", "two circles", "night", "a", "b"]


def main(out: str, method_name: str, gather: bool) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    encoder = build_encoder("tiny", config=SMALL)
    config = {"gather_negatives": gather, "symmetric": True}
    if method_name == "combiner":
        config["dropout"] = 0.0
    # eval(): no dropout, so both runs compute the same function; DDP syncs gradients either way.
    method = build_method(method_name, encoder, config).eval()
    if method_name == "csmcir":
        # Its memory bank fills in training mode: the method's own flag on, its modules (dropout,
        # batch statistics that differ between a half and a whole batch) still in eval mode.
        method.training = True
    generator = torch.Generator().manual_seed(1)
    batch = {
        "reference": torch.randn(len(TEXTS), 1, 3, 64, 64, generator=generator),
        "target": torch.randn(len(TEXTS), 1, 3, 64, 64, generator=generator),
        "tokens": encoder.tokenize(TEXTS),
        "target_caption": encoder.tokenize(TEXTS[::-1]),
        "target_id": [f"t{i}" for i in range(len(TEXTS))],
    }
    model = method
    if world > 1:
        per = len(TEXTS) // world
        batch = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}  # Tokens slice too
        model = torch.nn.parallel.DistributedDataParallel(
            method, find_unused_parameters=method.ddp_find_unused_parameters
        )
    loss = sum(model(batch).values())
    loss.backward()
    method.after_step(1)  # state updates (a memory bank) with every rank's features
    total = loss.detach().clone()
    if world > 1:
        dist.all_reduce(total)
        total /= world
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        bank = getattr(method, "bank", None)
        state = {k: v.clone() for k, v in bank.state_dict().items()} if bank is not None else {}
        torch.save({"loss": total, "grads": grads, "bank": state}, out)
    if world > 1:
        # Both ranks done before DDP's reducer and the group go (a rank leaving first can abort the other).
        dist.barrier()
        del model
        dist.destroy_process_group()
        # Leave without C++ static destructors: a gloo thread torn down at interpreter exit has
        # aborted a rank ("terminate called without an active exception") after all the work above
        # had finished. Any failure before this line still exits non-zero.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
