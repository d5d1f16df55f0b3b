"""Checkpoints on disk: a digest at save checked at restore, the newest few kept, no links."""

from __future__ import annotations

import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from anet_lite.torch import checkpoint as ck  # noqa: E402


def _state(seed: int, step: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, ck.capture(model, opt, None, step)


def test_load_refuses_a_swapped_checkpoint(tmp_path):
    _, _, good = _state(0, 100)
    _, _, other = _state(1, 100)
    path = ck.save(good, tmp_path / "a")
    rogue = ck.save(other, tmp_path / "b")
    assert ck.load(path).step == 100
    shutil.copyfile(rogue, path)  # a weights-only file swapped in
    with pytest.raises(ValueError, match="digest mismatch"):
        ck.load(path)
    shutil.copyfile(ck.digest_path(rogue), ck.digest_path(path))  # and its digest file too
    with pytest.raises(ValueError, match="digest mismatch"):
        ck.load(path)  # this process remembers what it saved
    ck._SAVED.clear()  # a fresh process: the digest file is what is known
    assert ck.load(path).step == 100  # (the swapped pair is consistent: documented limit)
    with open(path, "r+b") as f:  # one flipped byte
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ValueError, match="digest mismatch"):
        ck.load(path)
    os.unlink(ck.digest_path(path))
    with pytest.raises(ValueError, match="no digest"):
        ck.load(path)


def test_restored_state_is_the_saved_one(tmp_path):
    model, opt, good = _state(0, 7)
    path = ck.save(good, tmp_path)
    with torch.no_grad():
        model.weight.add_(1.0)
    ck.restore(ck.load(path), model, opt, None)
    assert torch.equal(model.weight, good.model["weight"])


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, opt, _ = _state(0, 0)
    for step in range(100, 3100, 100):
        ck.save(ck.capture(model, opt, None, step), tmp_path)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [
        f"anet-guard-{s:09d}.pt{x}" for s in (2800, 2900, 3000) for x in ("", ".sha256")
    ]
    ck.save(ck.capture(model, opt, None, 3100), tmp_path, keep=None)
    assert len(list(tmp_path.glob("*.pt"))) == 4
    with pytest.raises(ValueError, match="keep"):
        ck.save(ck.capture(model, opt, None, 1), tmp_path, keep=0)


def test_guard_keeps_few_checkpoints(tmp_path):
    from anet_lite.torch import Guard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:256] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:256])
    g = Guard(model, opt, checkpoint_every=5, checkpoint_dir=tmp_path / "ck", on_error="raise")
    for i in range(60):
        xb, yb = x[(i * 16) % 256 :][:16], y[(i * 16) % 256 :][:16]
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        g.observe(loss)
        opt.step()
        opt.zero_grad()
    assert len(list((tmp_path / "ck").glob("*.pt"))) == ck.KEEP


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_save_does_not_follow_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    folder = tmp_path / "ck"
    folder.mkdir()
    os.symlink(victim, folder / "anet-guard-000000005.tmp")
    _, _, state = _state(0, 5)
    path = ck.save(state, folder)
    assert victim.read_bytes() == b"precious"
    assert ck.load(path).step == 5
