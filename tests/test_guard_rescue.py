"""The policy skips through a run of bad batches instead of escalating (real digits MLP)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_guard import _digits_with_a_shard, _same_weights  # noqa: E402

pytestmark = pytest.mark.torch


def test_a_declaring_loop_skips_through_a_shard_of_seven_bad_batches():
    # Seven batches with shuffled labels in a row: each is a bad batch, each update is
    # skipped, and the run goes on with the weights it had before the shard: nothing to
    # roll back, no reason to stop (with two skips allowed it rolled back, then stopped).
    g, w = _digits_with_a_shard(declared=True, k=7, steps=360)
    kinds = [(a.step, a.kind) for a in g.actions]
    assert kinds == [(351 + i, "skip_step") for i in range(7)], kinds
    assert _same_weights(w[350], w[357])
    assert g.step == 360
