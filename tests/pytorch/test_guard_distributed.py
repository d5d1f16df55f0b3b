"""Guard under a real torch.distributed process group: 2 processes, gloo, 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket

import pytest

torch = pytest.importorskip("torch")
import ddp_worker  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, *, fsdp: bool, steps: int = 80, bad_step: int = 60, sample: int = 1):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/ (ddp_worker)
    os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")
    mp.spawn(
        ddp_worker.run,
        args=(2, free_port(), str(tmp_path), bad_step, steps, fsdp, sample),
        nprocs=2,
        join=True,
    )
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("sample", [1, 4])
def test_ddp_one_corrupted_batch_same_action_same_step(tmp_path, sample):
    r0, r1 = launch(tmp_path, fsdp=False, sample=sample)
    assert r0["actions"] == r1["actions"]  # every rank decided the same thing at the same step
    assert r0["actions"] and r0["actions"][0] == [60, "skip_step"]
    assert r0["finite"] and r1["finite"]
    assert r0["param_sum"] == pytest.approx(r1["param_sum"], rel=1e-6)  # replicas still agree
    assert [x["loss"] for x in r0["record"]] == [x["loss"] for x in r1["record"]]  # reduced loss
    gns = [x["gns"] for x in r0["record"] if x["gns"] is not None]
    assert gns and all(v == v for v in gns[-10:])  # the noise scale is estimated (not nan)
    lines = (tmp_path / "tombstones.jsonl").read_text().splitlines()
    assert len(lines) == len(r0["actions"])  # only rank 0 wrote


@pytest.mark.parametrize("sample", [1, 4])
def test_fsdp_norms_are_global(tmp_path, sample):
    # sample=4: the noise and update are sampled per shard; the norm stays exact
    r0, r1 = launch(tmp_path, fsdp=True, steps=30, bad_step=10**9, sample=sample)
    g0 = [x["grad_norm"] for x in r0["record"]]
    assert g0 == [x["grad_norm"] for x in r1["record"]]  # summed squares across shards
    ref = [x["ref_grad_norm"] for x in r0["record"]]
    assert g0 == pytest.approx(ref, rel=1e-5)  # not under-reported by sqrt(shards)
    assert r0["actions"] == r1["actions"] == []
