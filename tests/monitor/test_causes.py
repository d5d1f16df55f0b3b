"""Every registered cause goes through every consumer: policy, explain (en, ja), summaries."""

from __future__ import annotations

import pytest

from anet_lite import Policy, Snapshot
from anet_lite.monitor.causes import CAUSES, FIRST_ACTIONS, STATUSES
from anet_lite.monitor.explain import CAUSE_WORDS, explain

REAL = [c for c in CAUSES.values() if c.variant_of is None]


@pytest.mark.parametrize("c", list(CAUSES.values()), ids=lambda c: c.name)
def test_a_cause_is_complete(c):
    assert c.status in STATUSES and c.first_action in FIRST_ACTIONS
    assert c.variant_of is None or c.variant_of in CAUSES
    for what, advice in (c.en, c.ja):
        assert "{nums}" in what and what.strip() and advice.strip()
    assert all(c.short)


@pytest.mark.parametrize("c", REAL, ids=lambda c: c.name)
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_cause_is_explained_in_its_own_words_and_acted_on(c, lang):
    snap = Snapshot(1.0, 0.0, 0.0, 0.0, True, 3.0, step=7, status=c.status, alert=True,
                    evidence={"cause": c.name})
    text = explain(snap, lang=lang)
    what = (c.en if lang == "en" else c.ja)[0]
    assert text.startswith(what.split("{")[0])  # its own sentence, not another cause's
    assert c.name in CAUSE_WORDS[lang]
    action = Policy().decide(snap)
    expected = "slow_down" if c.status == "drifting" else c.first_action
    assert action.kind == expected, action.reason
