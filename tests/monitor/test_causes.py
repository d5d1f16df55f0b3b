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


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_a_slow_rise_of_a_run_that_learned_is_told_as_the_progress_given_back(lang):
    ev = {"cause": "slow_rise", "cusum": 386.0, "cusum_h": 42.0, "rise_steps": 334,
          "level_ratio": 1.16}
    base = Snapshot(1.0, 0.0, 0.0, 0.0, True, 0.8, step=694, status="precursor", alert=True,
                    evidence=ev)
    given = Snapshot(1.0, 0.0, 0.0, 0.0, True, 0.8, step=694, status="precursor", alert=True,
                     evidence={**ev, "given_back": 0.21})
    for snap, name, shown in ((base, "slow_rise", "1.16"), (given, "slow_rise_given_back", "21%")):
        what = getattr(CAUSES[name], lang)[0]
        text = explain(snap, lang=lang)
        assert text.startswith(what.split("{")[0]) and shown in text
    assert explain(base, lang=lang) != explain(given, lang=lang)
    assert Policy().decide(given).kind == "slow_down"
