"""Numbers → words: one or two sentences per snapshot, in English or Japanese.

The cause comes from the monitor's evidence (``evidence["cause"]``); the numbers quoted
are the evidence's; the advice follows the seed's FAQ: first lower the learning rate /
temperature / LoRA rank step by step; if the precursor fires as well, go to safety
(roll back). The words of every cause live in the cause registry (``causes.py``).
"""

from __future__ import annotations

import math
from typing import Any, Dict

from .causes import CAUSES

_HEALTHY = {
    "en": "Healthy: θ={theta:.2f}, F_Total={f_total:+.2f}, z={precursor_z:+.2f}.",
    "ja": "健全です：ϑ={theta:.2f}、F_Total={f_total:+.2f}、z={precursor_z:+.2f}。",
}
_WARMING = {
    "en": "Warming up: collecting the healthy reference (θ, baselines) — no verdict yet.",
    "ja": "ウォームアップ中：健全な参照（ϑ・基準値）を集めています。判定はまだです。",
}
_RECOVERING = {
    "en": "Recovering: an action was taken on this run; the loss is {loss_vs_before:.3g}x its "
    "level before the incident and coming back (healthy again once it is there).",
    "ja": "回復中：この実行に対処しました。損失はインシデント前の水準の {loss_vs_before:.3g} 倍で、"
    "戻りつつあります（戻れば健全に戻ります）。",
}
_RECOVERING_NO_LOSS = {
    "en": "Recovering: an action was taken on this run; healthy again once the loss is back at "
    "its level before the incident.",
    "ja": "回復中：この実行に対処しました。損失がインシデント前の水準に戻れば健全に戻ります。",
}
_DRIFTING = {
    "en": "Drifting: the training dynamics moved away from the healthy reference "
    "(θ={theta:.2f}); watched, not yet a failure.",
    "ja": "ドリフト中：学習の力学が健全な参照から離れています（ϑ={theta:.2f}）。監視中で、まだ故障ではありません。",
}
_SHIFT = {
    "en": "Level shift: the loss moved to {loss_ratio:.3g}x its level in one step and is not "
    "climbing further (new or harder data?); watched — it alerts if the loss keeps rising.",
    "ja": "水準の移動：損失が 1 ステップで {loss_ratio:.3g} 倍の水準に移り、それ以上は上がっていません"
    "（新しい、または難しいデータ？）。監視中で、上がり続ければ警報を出します。",
}
_SPIKE = {
    "en": " A one-step loss spike (deviation {loss_dev:.1f}σ) was seen; the run recovered, so it is not a precursor.",
    "ja": " 1 ステップだけの損失スパイク（{loss_dev:.1f}σ）がありましたが、回復しているので前駆ではありません。",
}
_EVENT = {
    "en": " Schedule event '{event}' noted: not a failure.",
    "ja": " スケジュール上の変更「{event}」を確認しました。故障ではありません。",
}


__all__ = ["CAUSE_WORDS", "explain", "explain_safe"]

CAUSE_WORDS = {  # a short name for each cause, for summaries and reports
    "en": {c.name: c.short[0] for c in CAUSES.values() if c.variant_of is None},
    "ja": {c.name: c.short[1] for c in CAUSES.values() if c.variant_of is None},
}


class _Nums(dict):
    def __missing__(self, key: str) -> float:
        return math.nan


def explain(snap: Any, lang: str = "en") -> str:
    """Words for a snapshot: likely cause, evidence numbers, advice (``lang`` "en" or "ja")."""
    if lang not in ("en", "ja"):
        raise ValueError(f"lang must be 'en' or 'ja', got {lang!r}")
    ev: Dict[str, Any] = _Nums(snap.evidence)
    ev.setdefault("theta", snap.theta)
    ev.setdefault("f_total", snap.f_total)
    ev.setdefault("precursor_z", snap.zscore)
    if not snap.alert:
        if snap.status == "drifting":
            text = (_SHIFT if ev.get("level_shift") else _DRIFTING)[lang].format_map(ev)
        else:
            words = {"warming_up": _WARMING, "recovering": _RECOVERING}.get(snap.status, _HEALTHY)
            if words is _RECOVERING and not math.isfinite(ev["loss_vs_before"]):
                words = _RECOVERING_NO_LOSS  # (no loss window to compare this step)
            text = words[lang].format_map(ev)
        if ev.get("spike"):
            text += _SPIKE[lang].format_map(ev)
        if ev.get("event"):
            text += _EVENT[lang].format_map(ev)
        return text
    cause = str(ev.get("cause") or ("non_finite" if snap.status == "collapsed" else "divergence"))
    if cause == "divergence" and ev.get("compounding"):
        cause = "compounding"  # (the same cause, reached by compounding growth)
    elif cause == "bad_batch" and "first_loss_ratio" in ev:
        cause = "bad_batch_undeclared"  # (Monitor(declared=True))
    elif cause == "slow_rise" and math.isfinite(ev["given_back"]):
        cause = "slow_rise_given_back"  # (a run that had learned: its progress is the scale)
    entry = CAUSES.get(cause) or CAUSES["divergence"]
    what, advice = entry.en if lang == "en" else entry.ja
    nums = (
        f" (θ={snap.theta:.2f}, F_Total={snap.f_total:+.2f}, z={snap.zscore:+.2f}"
        + (f", step {snap.step}" if snap.step is not None else "")
        + ")"
    )
    if lang == "ja":
        nums = nums.replace("(", "（").replace(")", "）").replace("step", "ステップ")
    return what.format_map(_Nums(ev, nums=nums)) + " " + advice


def explain_safe(snap: Any, lang: str = "en") -> str:
    """``explain``, but never raises: for log lines written next to an action, where the
    words are advice and must not stop the action."""
    try:
        return explain(snap, lang=lang)
    except Exception as exc:  # pragma: no cover - explain is total over snapshots
        return f"(no explanation: {exc!r})"
