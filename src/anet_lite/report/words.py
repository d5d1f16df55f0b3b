"""The report's words in English and Japanese, counts with the right plural, and the
explanations fitted to the run's precision (no loss-scale advice for an fp32 run)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = [
    "ACTION_KINDS",
    "ACTION_WORDS",
    "LANGS",
    "STATUS_WORDS",
    "W",
    "action_word",
    "count",
    "fit_precision",
    "status_word",
    "words",
]

LANGS = ("en", "ja")
ACTION_KINDS = ("slow_down", "skip_step", "clip", "rollback", "stop")

# ---- counts ---------------------------------------------------------------------------------

_NOUNS: Dict[str, Tuple[str, str, str]] = {  # key: (English one, English many, Japanese counter)
    "alert_step": ("alert step", "alert steps", "警報ステップ {n:,} 件"),
    "incident": ("incident", "incidents", "インシデント {n:,} 件"),
    "record": ("record", "records", "{n:,} 件"),
    "step": ("step", "steps", "{n:,} ステップ"),
    "line": ("log line", "log lines", "ログ {n:,} 行"),
    "action": ("action", "actions", "対処 {n:,} 回"),
}


def count(n: int, noun: str, lang: str = "en") -> str:
    """``n`` and its noun, e.g. count(1, "alert_step") -> "1 alert step", 2 -> "2 alert steps";
    in Japanese the counter form, e.g. "警報ステップ 1 件"."""
    one, many, ja = _NOUNS[noun]
    if lang == "ja":
        return ja.format(n=n)
    return f"{n:,} {one if n == 1 else many}"


# ---- page words -----------------------------------------------------------------------------

W: Dict[str, Dict[str, str]] = {
    "en": {
        "title": "anet-lite report: {name}",
        "no_steps": "No steps in this run.",
        "not_judged": "Not enough steps to judge: all {n} were warm-up (the Monitor learns the "
        "run's levels first); no alert.",
        "healthy": "Healthy — no alert in {n} ({judged} judged after warm-up).",
        "ends_at_start": "No alert in {n} ({judged} judged after warm-up), but the loss ends "
        "where it started: its last {k} values average {r:.2f}× the first. The run kept "
        "nothing it learned (dead units, an lr far too high or too low) — unless this log "
        "starts from a trained model.",
        "ends_at_log_start": "No alert in {n} ({judged} judged after warm-up), but the loss "
        "ends where this log starts (step {s}): its last {k} values average {r:.2f}× the "
        "first. No progress over the logged steps.",
        "protected": "Protected: {inc}, recovered. The Guard acted ({acts}, the first at step "
        "{a}); the first alert at step {s}: {cause}.",
        "protected_stop": "Protected, then stopped: the Guard stopped the run at step {stop} "
        "after {inc} ({acts}): the cause persisted, a person has to fix it. The first alert at "
        "step {s}: {cause}.",
        "collapsed": "Collapsed at step {c}: the loss or gradient is no longer a finite number. "
        "The first alert came {k} before, at step {s}: {cause}.",
        "collapsed_at_alert": "Collapsed at step {c}: the loss or gradient is no longer a finite "
        "number ({cause}).",
        "ended_alert": "Failed: the run ended in an alert ({status} at step {last}). {alerts} "
        "in {inc}; the first at step {s}: {cause}.",
        "alerts_only": "{alerts} in {inc}; the first at step {s}: {cause}. The run ended {status}.",
        "h_summary": "Summary",
        "h_plots": "Signals over steps",
        "h_zoom": "Around the first incident (steps {a} – {b})",
        "h_alerts": "Alerts",
        "h_tomb": "Actions (tombstone log)",
        "r_steps": "steps",
        "r_alerts": "alert steps",
        "r_incidents": "incidents",
        "r_first": "first alert step",
        "r_cause": "cause",
        "r_collapse": "collapse step (loss or gradient not finite)",
        "r_actions": "actions (Guard)",
        "r_events": "schedule events",
        "r_spikes": "one-step spikes (not alerts)",
        "r_source": "source",
        "r_format": "format",
        "r_columns": "columns used",
        "r_input": "input",
        "r_chain": "tombstone chain",
        "r_precision": "precision",
        "r_twin": "compared with",
        "chain_ok": "ok ({n})",
        "chain_bad": "BROKEN: {reason}",
        "not_logged": "Not logged: {what}.",
        "need_mpl": "Plots need matplotlib: pip install 'anet-lite[report]'.",
        "no_plots": "No plots: matplotlib could not draw these values ({exc}).",
        "nothing": "Nothing to plot.",
        "zoom_note": "The same signals over the {n} logged around the first alert; the shaded "
        "steps are the incident, purple lines the Guard's actions.",
        "no_alerts": "No alerts.",
        "alerts_intro": "{alerts} grouped into {inc} (alerts at most {gap} steps apart form one "
        "incident); the first alert of each is explained.",
        "span_one": "step {a}",
        "span_many": "steps {a} – {b}",
        "more": "… and {n} more.",
        "no_tomb": "No tombstones.jsonl in this run folder.",
        "tomb_ok": "Chain verified: {n}, intact.",
        "tomb_bad": "Chain broken: {why}",
        "t_line": "line",
        "t_event": "event",
        "t_time": "time",
        "t_policy": "policy",
        "t_step": "step",
        "t_reason": "reason",
        "t_hash": "hash",
        "not_json": "(not a JSON object)",
        "footer": "Generated by anet-lite {v} on {now} from {src}.",
        "p_loss": "loss",
        "p_grad_norm": "gradient norm",
        "p_lr": "learning rate",
        "p_theta": "θ (noise-fingerprint similarity)",
        "p_f_total": "F_Total",
        "p_zscore": "precursor z",
        "p_step": "step",
        "l_value": "value (min/max per bucket)",
        "l_incident": "alert incident",
        "l_event": "schedule event",
        "l_spike": "one-step spike",
        "l_action": "action (tombstone)",
        "l_twin_watching": "loss without the Guard (--no-guard run)",
        "l_twin_acting": "loss with the Guard acting",
        "twin_watching": "the same run without the Guard (--no-guard): {path}",
        "twin_acting": "the same run with the Guard acting: {path}",
        "twin_missing": "(its metrics could not be read: {why})",
        "aria": "loss, gradient norm, learning rate, θ, F_Total and z over steps",
        "z_flat": "The precursor z could not be computed on this run (it reads 0 on every "
        "step): its window never held 3 steps with a baseline behind them (a run that is too "
        "short, or steps logged too far apart for the window).",
        "theta_flat": "θ stays 1.0 on every step: no healthy noise-fingerprint reference was "
        "taken (the run never settled after warm-up, or it is too short), so θ says nothing "
        "here.",
        "no_explanation": "(no explanation: {exc})",
    },
    "ja": {
        "title": "anet-lite レポート：{name}",
        "no_steps": "この学習にはステップがありません。",
        "not_judged": "判定に足りるステップがありません：{n}すべてがウォームアップでした"
        "（Monitor はまず学習の水準を学びます）。警報はありません。",
        "healthy": "健全：{n}で警報なし（ウォームアップ後に判定したのは {judged}）。",
        "ends_at_start": "{n}で警報なし（ウォームアップ後に判定したのは {judged}）。ただし損失は"
        "始めの値に戻って終わっています：最後の {k} 個の平均は最初の損失の {r:.2f} 倍です。"
        "学んだものが何も残っていません（死んだユニット、学習率の過大・過小）。訓練済みの"
        "モデルから始まったログなら別です。",
        "ends_at_log_start": "{n}で警報なし（ウォームアップ後に判定したのは {judged}）。ただし"
        "損失はこのログの始まり（ステップ {s}）の値に戻って終わっています：最後の {k} 個の平均は"
        "最初の損失の {r:.2f} 倍です。記録された区間で進歩がありません。",
        "protected": "保護済み：{inc}、回復しました。ガードが対処しました（{acts}、最初は"
        "ステップ {a}）。最初の警報はステップ {s}：{cause}。",
        "protected_stop": "保護後に停止：ガードはステップ {stop} で学習を停止しました（{inc}、"
        "{acts}）。原因が消えなかったため、人が直す必要があります。最初の警報はステップ {s}："
        "{cause}。",
        "collapsed": "ステップ {c} で崩壊：損失または勾配が有限の数ではなくなりました。最初の"
        "警報はその {k}前、ステップ {s}：{cause}。",
        "collapsed_at_alert": "ステップ {c} で崩壊：損失または勾配が有限の数ではなくなりました"
        "（{cause}）。",
        "ended_alert": "失敗：学習は警報の状態で終わりました（ステップ {last} で{status}）。"
        "{inc}に{alerts}。最初はステップ {s}：{cause}。",
        "alerts_only": "{inc}に{alerts}。最初はステップ {s}：{cause}。学習は「{status}」で"
        "終わりました。",
        "h_summary": "概要",
        "h_plots": "ステップごとの信号",
        "h_zoom": "最初のインシデントの周辺（ステップ {a}〜{b}）",
        "h_alerts": "警報",
        "h_tomb": "対処（墓標ログ）",
        "r_steps": "ステップ数",
        "r_alerts": "警報ステップ",
        "r_incidents": "インシデント",
        "r_first": "最初の警報ステップ",
        "r_cause": "原因",
        "r_collapse": "崩壊ステップ（損失または勾配が非有限）",
        "r_actions": "対処（ガード）",
        "r_events": "スケジュール上の変更",
        "r_spikes": "1 ステップのスパイク（警報ではない）",
        "r_source": "入力元",
        "r_format": "形式",
        "r_columns": "使った列",
        "r_input": "入力",
        "r_chain": "墓標チェーン",
        "r_precision": "精度",
        "r_twin": "比較対象",
        "chain_ok": "正常（{n}）",
        "chain_bad": "破損：{reason}",
        "not_logged": "記録なし：{what}。",
        "need_mpl": "グラフには matplotlib が必要です：pip install 'anet-lite[report]'。",
        "no_plots": "グラフなし：matplotlib がこの値を描けませんでした（{exc}）。",
        "nothing": "描くものがありません。",
        "zoom_note": "最初の警報の前後 {n}の同じ信号です。網掛けはインシデント、紫の線は"
        "ガードの対処です。",
        "no_alerts": "警報はありません。",
        "alerts_intro": "{alerts}を{inc}にまとめました（{gap} ステップ以内の警報は同じ"
        "インシデント）。各インシデントの最初の警報を説明します。",
        "span_one": "ステップ {a}",
        "span_many": "ステップ {a}〜{b}",
        "more": "… ほか {n} 件。",
        "no_tomb": "この出力フォルダに tombstones.jsonl はありません。",
        "tomb_ok": "チェーン検証済み：{n}、改ざんなし。",
        "tomb_bad": "チェーン破損：{why}",
        "t_line": "行",
        "t_event": "対処",
        "t_time": "時刻",
        "t_policy": "方針",
        "t_step": "ステップ",
        "t_reason": "理由",
        "t_hash": "ハッシュ",
        "not_json": "（JSON オブジェクトではありません）",
        "footer": "anet-lite {v} が {now} に {src} から作成。",
        "p_loss": "損失",
        "p_grad_norm": "勾配ノルム",
        "p_lr": "学習率",
        "p_theta": "ϑ（ノイズ指紋の類似度）",
        "p_f_total": "F_Total",
        "p_zscore": "前駆 z",
        "p_step": "ステップ",
        "l_value": "値（区間ごとの最小／最大）",
        "l_incident": "警報インシデント",
        "l_event": "スケジュール上の変更",
        "l_spike": "1 ステップのスパイク",
        "l_action": "対処（墓標）",
        "l_twin_watching": "ガードなしの損失（--no-guard）",
        "l_twin_acting": "ガードありの損失",
        "twin_watching": "ガードなしの同じ学習（--no-guard）：{path}",
        "twin_acting": "ガードが対処した同じ学習：{path}",
        "twin_missing": "（その記録を読めませんでした：{why}）",
        "aria": "ステップごとの損失・勾配ノルム・学習率・ϑ・F_Total・z",
        "z_flat": "この学習では前駆 z を計算できませんでした（全ステップで 0）：窓に基準値を"
        "伴う 3 ステップがそろいませんでした（学習が短すぎるか、記録の間隔が窓に対して"
        "広すぎます）。",
        "theta_flat": "ϑ は全ステップで 1.0 のままです：健全なノイズ指紋の参照が取られません"
        "でした（ウォームアップ後に落ち着かなかったか、短すぎます）。ここでの ϑ に意味は"
        "ありません。",
        "no_explanation": "（説明なし：{exc}）",
    },
}

STATUS_WORDS: Dict[str, Dict[str, str]] = {
    "en": {"warming_up": "warming up"},
    "ja": {
        "warming_up": "ウォームアップ",
        "healthy": "健全",
        "recovering": "回復中",
        "drifting": "ドリフト",
        "precursor": "前駆",
        "collapsed": "崩壊",
    },
}

ACTION_WORDS: Dict[str, Dict[str, str]] = {
    "en": {
        "slow_down": "slow down",
        "skip_step": "skip",
        "clip": "clip",
        "rollback": "roll back",
        "stop": "stop",
    },
    "ja": {
        "slow_down": "減速",
        "skip_step": "スキップ",
        "clip": "クリップ",
        "rollback": "ロールバック",
        "stop": "停止",
    },
}


def words(lang: str) -> Dict[str, str]:
    """The report's words for ``lang`` ("en" or "ja"; anything else reads as English)."""
    return W.get(lang, W["en"])


def status_word(status: str, lang: str) -> str:
    """A Monitor status in ``lang`` (e.g. "precursor" -> "前駆"); unknown ones unchanged."""
    return STATUS_WORDS.get(lang, {}).get(status, status)


def action_word(kind: str, lang: str) -> str:
    """A Guard action kind in ``lang`` (e.g. "skip_step" -> "skip"); unknown ones unchanged."""
    return ACTION_WORDS.get(lang, ACTION_WORDS["en"]).get(kind, kind)


# ---- advice that fits the run's precision --------------------------------------------------

# Loss-scale / mixed-precision advice in the cause registry's words (causes.py), and what an
# fp32 run reads instead: an fp32 run has no loss scaler to check. Each fragment is checked
# against the registry by tests/report/test_report.py, so a reworded registry fails loudly.
FP16_ONLY: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "en": (
        (" (numeric overflow, e.g. a loss-scale or fp16 problem)", " (numeric overflow)"),
        ("; check the loss scale and mixed-precision settings.", "."),
        (" or after a schedule or loss-scale bug", " or after a schedule bug"),
        ("; check the data and the loss scale.", "; check the data."),
        (", a loss scale, layers unfrozen", ", layers unfrozen"),
        (
            "check gradient accumulation, loss scaling and which",
            "check gradient accumulation and which",
        ),
    ),
    "ja": (
        ("（数値のオーバーフロー、損失スケールや fp16 の問題）", "（数値のオーバーフロー）"),
        ("損失スケールと混合精度の設定を確認してください。", ""),
        ("スケジュールや損失スケールの不具合の後", "スケジュールの不具合の後"),
        ("データと損失スケールを確認してください。", "データを確認してください。"),
        ("、損失スケール、凍結解除された層", "、凍結解除された層"),
        ("勾配累積、損失スケーリング、学習対象", "勾配累積、学習対象"),
    ),
}


def fit_precision(text: str, lang: str, precision: Optional[str]) -> str:
    """``text`` (an explanation) without the loss-scale / mixed-precision advice when the run
    is known to train in fp32 (``precision`` "fp32"); unchanged otherwise (fp16/bf16 or AMP
    runs, or a precision nobody recorded)."""
    if str(precision or "").lower() not in ("fp32", "float32"):
        return text
    for old, new in FP16_ONLY.get(lang, ()):
        text = text.replace(old, new)
    return text
