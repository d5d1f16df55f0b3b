"""Worker for tests/pytorch/test_guard_distributed.py: one rank of a real gloo process group."""

from __future__ import annotations

import gc
import json
import os
import sys


def run(
    rank: int, world: int, port: int, out: str, bad_step: int, steps: int, fsdp: bool, sample=1
) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch_fixtures import batches, char_mlp

    from anet_lite.torch import Guard

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    model = char_mlp(seed=0)
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard  # FSDP2: DTensor shards, works on CPU

        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    else:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    log = os.path.join(out, "tombstones.jsonl")
    guard = Guard(
        model,
        opt,
        tombstones=log,
        checkpoint_every=20,
        batch_size=32,
        sample=sample,
        on_error="raise",
    )
    record = []
    for step, (x, y) in enumerate(batches(steps, bs=32, seed=100 + rank), 1):
        loss = nn.functional.cross_entropy(model(x), y)
        if rank == 1 and step == bad_step:
            loss = loss * 1e4  # this rank's batch is corrupted: absurd targets, huge loss
        loss.backward()
        ref = None
        if fsdp:  # the global norm the slow way: gather every shard
            sq = sum(
                float(p.grad.full_tensor().double().square().sum()) for p in model.parameters()
            )
            ref = sq**0.5
        guard.observe(loss)
        opt.step()
        opt.zero_grad()
        snap = guard.last
        record.append(
            {
                "step": step,
                "status": snap.status,
                "loss": snap.evidence["loss"],
                "grad_norm": snap.evidence.get("grad_norm"),
                "gns": snap.evidence.get("gns"),
                "ref_grad_norm": ref,
            }
        )
    params = sum(float(p.detach().double().sum()) for p in model.parameters())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "actions": [[a.step, a.kind] for a in guard.actions],
                "record": record,
                "param_sum": params,
                "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
            },
            f,
        )
    # both ranks reach the teardown together: a rank that destroys its group while the
    # other still holds the connection can abort in gloo's threads ("terminate called
    # without an active exception", seen twice in CI on a loaded machine, the second time
    # with this barrier; never in 20 runs under load here). Nothing that holds the group
    # (the DDP reducer, the Guard's hooks) outlives it either.
    guard.close()
    del guard, opt, model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
