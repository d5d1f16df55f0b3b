"""Numbers → words: one or two sentences per snapshot, in English or Japanese.

The cause comes from the monitor's evidence (``evidence["cause"]``); the numbers quoted
are the evidence's; the advice follows the seed's FAQ: first lower the learning rate /
temperature / LoRA rank step by step; if the precursor fires as well, go to safety
(roll back).
"""

from __future__ import annotations

import math
from typing import Any, Dict

# "bad_batch": a Monitor cause again only with ``Monitor(declared=True)`` (evidence
# "first_loss_ratio", worded by "bad_batch_undeclared"); the plain words stay for run
# folders written by earlier versions.
_EN = {
    "non_finite": (
        "The loss or gradient is no longer a finite number (numeric overflow, e.g. a "
        "loss-scale or fp16 problem){nums}.",
        "Skip this update and roll back to the last "
        "healthy state; check the loss scale and mixed-precision settings.",
    ),
    "lr_jump": (
        "The learning rate jumped to {lr_jump:.3g}x the largest value the schedule used "
        "before (lr={lr:.3g}) — a schedule bug, not a planned change{nums}.",
        "Restore the intended learning rate now; if the precursor fires as well, roll back.",
    ),
    "bad_batch": (
        "One batch sent the loss to {loss_ratio:.3g}x its recent level at once — likely a "
        "bad batch or corrupted data{nums}.",
        "Skip this update and check that batch; roll back if the next steps do not recover.",
    ),
    "bad_batch_undeclared": (
        "One batch sent the loss to {first_loss_ratio:.3g}x the run's first loss at once, "
        "and no change of data was declared — a bad batch or corrupted data (labels or "
        "inputs that contradict what the model learned){nums}.",
        "Skip this update and check that batch and its shard; roll back if the next steps "
        "do not recover. If the data changed on purpose, declare it with mark().",
    ),
    "grad_explosion": (
        "The gradient norm jumped to {grad_ratio:.3g}x its recent level in one step — "
        "a bad batch or an exploding gradient{nums}.",
        "Skip this update; if it repeats, lower the learning rate or clip gradients.",
    ),
    "update_blowup": (
        "The parameter update became {update_ratio:.3g}x larger than usual for this "
        "learning rate — the optimizer is unstable (e.g. Adam's ε/β2){nums}.",
        "Skip this update and lower the learning rate; roll back if it repeats.",
    ),
    "oversized_update": (
        "One update moved the parameters by {rel_update:.1%} of their norm (the limit is "
        "{rel_update_limit:.0%}) — the learning rate is far too high for this model, "
        "from the start (no warm-up?) or after a schedule or loss-scale bug{nums}.",
        "Lower the learning rate now (or add a warm-up); roll back if the loss follows.",
    ),
    "oscillation": (
        "The loss is rising and jittering (z={precursor_z:.2f}) — the learning rate is "
        "likely too high and training is oscillating{nums}.",
        "Lower the learning rate step by step; if it keeps firing, roll back.",
    ),
    "divergence": (
        "The loss is rising steadily above its recent level (z={precursor_z:.2f}) — "
        "training is starting to diverge{nums}.",
        "Lower the learning rate step by step; if it keeps rising, roll back.",
    ),
    "compounding": (
        "The gradient norm ({grad_ratio:.3g}x its recent level) and the update have grown "
        "step after step, the loss with them or a step behind — training is "
        "diverging{nums}.",
        "Lower the learning rate now and check the loss's sign and scale; roll back if "
        "it keeps growing.",
    ),
    "grad_growth": (
        "The gradient norm has stayed far above its recent level for several steps — a "
        "divergence that the loss does not show yet{nums}.",
        "Lower the learning rate now, before the loss follows.",
    ),
    "ascent": (
        "The updates follow the gradient far more closely than usual (processivity "
        "{proc_lift:+.2f} above its level) while they grow step after step and the loss "
        "climbs (or lags a step behind) — the optimizer is going uphill: a gradient-sign "
        "bug or a loss being maximised{nums}.",
        "Check the loss's sign and any gradient hooks; roll back to the last healthy state.",
    ),
    "zero_gradient": (
        "The gradient is exactly zero although the run had a healthy gradient level — "
        "no example of this batch moves the weights: the outputs are saturated (inputs "
        "far out of range, e.g. a shard scaled by mistake), every unit is dead, or the "
        "gradients underflow (fp16 without loss scaling){nums}.",
        "Skip this update and check this batch's inputs and their scaling; roll back if "
        "it repeats.",
    ),
    "stagnation": (
        "The gradient norm has collapsed ~100x below its healthy level while the loss "
        "stays flat — units have died or training has stalled{nums}.",
        "Roll back to before the collapse and lower the learning rate; check for dead ReLUs.",
    ),
    "early_divergence": (
        "The loss climbed to {loss_ratio:.3g}x its first value within warm-up — the "
        "learning rate is likely too high from the start (no warm-up?){nums}.",
        "Stop and restart with a lower learning rate or a warm-up.",
    ),
    "fingerprint_shift": (
        "The gradient-noise fingerprint no longer matches the healthy reference "
        "(θ={theta:.2f}) — the training dynamics have shifted{nums}.",
        "Lower the learning rate / temperature / LoRA rank step by step and watch θ.",
    ),
}
_JA = {
    "non_finite": (
        "損失または勾配が有限の数ではなくなりました（数値のオーバーフロー、損失スケールや fp16 の問題）{nums}。",
        "この更新をスキップし、最後の健全な状態へロールバックしてください。損失スケールと混合精度の設定を確認してください。",
    ),
    "lr_jump": (
        "学習率がスケジュールのこれまでの最大値の {lr_jump:.3g} 倍（lr={lr:.3g}）に跳ね上がりました。計画された変更ではなくスケジュールの不具合です{nums}。",
        "すぐに本来の学習率へ戻してください。前駆も出ていればロールバックへ。",
    ),
    "bad_batch": (
        "1 つのバッチで損失が直近水準の {loss_ratio:.3g} 倍になりました。不良バッチか壊れたデータの可能性があります{nums}。",
        "この更新をスキップし、そのバッチを確認してください。次の数ステップで戻らなければロールバックへ。",
    ),
    "bad_batch_undeclared": (
        "1 つのバッチで損失が最初の損失の {first_loss_ratio:.3g} 倍になりました。データの変更は宣言されていません。"
        "不良バッチか壊れたデータ（モデルが学んだことと矛盾するラベルや入力）です{nums}。",
        "この更新をスキップし、そのバッチとシャードを確認してください。次の数ステップで戻らなければロールバックへ。"
        "意図したデータの変更なら mark() で宣言してください。",
    ),
    "grad_explosion": (
        "勾配ノルムが 1 ステップで直近水準の {grad_ratio:.3g} 倍に跳ねました。不良バッチか勾配爆発です{nums}。",
        "この更新をスキップしてください。繰り返すなら学習率を下げるか勾配をクリップしてください。",
    ),
    "update_blowup": (
        "この学習率にしてはパラメータ更新が通常の {update_ratio:.3g} 倍に大きくなりました。オプティマイザが不安定です（Adam の ε/β2 など）{nums}。",
        "この更新をスキップし、学習率を下げてください。繰り返すならロールバックへ。",
    ),
    "oversized_update": (
        "1 回の更新でパラメータがそのノルムの {rel_update:.1%} も動きました（上限 {rel_update_limit:.0%}）。このモデルには学習率が高すぎます。最初から（ウォームアップなし？）か、スケジュールや損失スケールの不具合の後です{nums}。",
        "今すぐ学習率を下げてください（またはウォームアップを入れてください）。損失も上がるならロールバックへ。",
    ),
    "oscillation": (
        "損失が上昇しつつ揺れています（z={precursor_z:.2f}）。学習率が高すぎて振動している可能性があります{nums}。",
        "学習率を段階的に下げてください。出続けるならロールバックへ。",
    ),
    "divergence": (
        "損失が直近水準より着実に上昇しています（z={precursor_z:.2f}）。発散の始まりです{nums}。",
        "学習率を段階的に下げてください。上がり続けるならロールバックへ。",
    ),
    "compounding": (
        "勾配ノルム（直近水準の{grad_ratio:.3g}倍）と更新がステップごとに揃って増えています"
        "（損失も一緒に、または一歩遅れて増えます）。発散しています{nums}。",
        "今すぐ学習率を下げ、損失の符号とスケールを確認してください。増え続けるならロールバックへ。",
    ),
    "grad_growth": (
        "勾配ノルムが数ステップにわたり直近水準を大きく上回っています。損失にはまだ出ていない発散です{nums}。",
        "損失に現れる前に、今すぐ学習率を下げてください。",
    ),
    "ascent": (
        "更新が普段よりはるかに勾配に沿って動き（プロセシビティが水準より {proc_lift:+.2f}）、更新が大きくなり続け、損失が上昇しています（または一歩遅れて上昇します）。オプティマイザが坂を上っています。勾配の符号の不具合か、損失を最大化しています{nums}。",
        "損失の符号と勾配フックを確認し、最後の健全な状態へロールバックしてください。",
    ),
    "zero_gradient": (
        "健全な勾配水準があった学習で、勾配がちょうどゼロになりました。このバッチのどの例も重みを動かしません。出力が飽和している（入力が範囲外、たとえば誤ってスケールされたシャード）か、すべてのユニットが死んでいるか、勾配がアンダーフローしています（損失スケーリングなしの fp16）{nums}。",
        "この更新をスキップし、このバッチの入力とそのスケーリングを確認してください。繰り返すならロールバックへ。",
    ),
    "stagnation": (
        "損失が高いまま平らで、勾配ノルムが健全時の約 1/100 に落ちました。ユニットが死んだか学習が止まっています{nums}。",
        "崩壊前へロールバックし、学習率を下げてください。死んだ ReLU を確認してください。",
    ),
    "early_divergence": (
        "ウォームアップ中に損失が最初の値の {loss_ratio:.3g} 倍まで上がりました。最初から学習率が高すぎる可能性があります（ウォームアップなし？）{nums}。",
        "停止し、学習率を下げるかウォームアップを入れて再開してください。",
    ),
    "fingerprint_shift": (
        "勾配ノイズの指紋が健全な参照と一致しなくなりました（ϑ={theta:.2f}）。学習の力学が変わっています{nums}。",
        "学習率／温度／LoRA ランクを段階的に下げ、ϑ を見守ってください。",
    ),
}
_HEALTHY = {
    "en": "Healthy: θ={theta:.2f}, F_Total={f_total:+.2f}, z={precursor_z:+.2f}.",
    "ja": "健全です：ϑ={theta:.2f}、F_Total={f_total:+.2f}、z={precursor_z:+.2f}。",
}
_WARMING = {
    "en": "Warming up: collecting the healthy reference (θ, baselines) — no verdict yet.",
    "ja": "ウォームアップ中：健全な参照（ϑ・基準値）を集めています。判定はまだです。",
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


CAUSE_WORDS = {  # a short name for each cause, for summaries and reports
    "en": {
        "non_finite": "the loss or gradient became non-finite",
        "lr_jump": "a learning-rate jump (schedule bug)",
        "lr_ramp": "the learning rate rose above the schedule's peak",
        "bad_batch": "a bad batch (one-step loss jump)",
        "grad_explosion": "a gradient explosion",
        "update_blowup": "an update blow-up",
        "oversized_update": "an update too large for the weights",
        "oscillation": "oscillation (loss rising and jittering)",
        "divergence": "divergence (loss rising)",
        "grad_growth": "persistent gradient growth",
        "ascent": "going uphill (coherent updates, rising loss)",
        "zero_gradient": "a gradient of exactly zero (saturated outputs)",
        "stagnation": "stagnation (gradient collapsed)",
        "fingerprint_shift": "a noise-fingerprint shift",
        "early_divergence": "the loss climbing from the first step",
    },
    "ja": {
        "non_finite": "損失または勾配が非有限",
        "lr_jump": "学習率の跳ね上がり（スケジュールの不具合）",
        "lr_ramp": "学習率がスケジュールの最大値を超えて上昇",
        "bad_batch": "不良バッチ（1 ステップでの損失の跳ね上がり）",
        "grad_explosion": "勾配爆発",
        "update_blowup": "更新の暴走",
        "oversized_update": "重みに対して大きすぎる更新",
        "oscillation": "振動（損失が上昇しつつ揺れる）",
        "divergence": "発散（損失の上昇）",
        "grad_growth": "勾配の持続的な増大",
        "ascent": "上り坂（揃った更新と損失の上昇）",
        "zero_gradient": "ちょうどゼロの勾配（出力の飽和）",
        "stagnation": "停滞（勾配の消失）",
        "fingerprint_shift": "ノイズ指紋のずれ",
        "early_divergence": "最初のステップからの損失の上昇",
    },
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
            text = (_WARMING if snap.status == "warming_up" else _HEALTHY)[lang].format_map(ev)
        if ev.get("spike"):
            text += _SPIKE[lang].format_map(ev)
        if ev.get("event"):
            text += _EVENT[lang].format_map(ev)
        return text
    table = _EN if lang == "en" else _JA
    cause = str(ev.get("cause") or ("non_finite" if snap.status == "collapsed" else "divergence"))
    if cause == "divergence" and ev.get("compounding"):
        cause = "compounding"  # (the same cause, reached by compounding growth)
    elif cause == "bad_batch" and "first_loss_ratio" in ev:
        cause = "bad_batch_undeclared"  # (Monitor(declared=True))
    what, advice = table.get(cause, table["divergence"])
    nums = (
        f" (θ={snap.theta:.2f}, F_Total={snap.f_total:+.2f}, z={snap.zscore:+.2f}"
        + (f", step {snap.step}" if snap.step is not None else "")
        + ")"
    )
    if lang == "ja":
        nums = nums.replace("(", "（").replace(")", "）").replace("step", "ステップ")
    return what.format_map(_Nums(ev, nums=nums)) + " " + advice
