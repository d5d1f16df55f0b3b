"""The demo's words in English and Japanese: UI lines, status names, number formatting."""

from __future__ import annotations

import math
from typing import Dict

from ..monitor.explain import CAUSE_WORDS
from ..report.words import status_word

# ---- words ----------------------------------------------------------------------------------

UI: Dict[str, Dict[str, str]] = {
    "en": {
        "title": "anet-lite demo: detect, explain, act, record",
        "fault": "fault",
        "fault_none": "none (a healthy run)",
        "fault_lr_jump": "the lr schedule multiplies the learning rate by {x:g} from step {s}"
        " on (a schedule bug)",
        "fault_bad_batch": "one corrupted batch at step {s}: its loss weights are {x:g}"
        " instead of 1 (a corrupted shard)",
        "fault_loss_scale": "the loss is multiplied by {x:g} from step {s} on (a loss-scale bug)",
        "model": "model",
        "model_desc": "character-level MLP ({params:,} parameters) on {chars:,} characters of"
        " Python's standard library source ({files})",
        "optim": "optimizer",
        "optim_desc": "SGD (momentum {m:g}), lr {lr:g} after a {w}-step linear warm-up;"
        " batch {b}; {steps} steps; seed {seed}",
        "guard": "guard",
        "guard_on": "acting (slow down / skip / roll back / stop; checkpoint every {k} steps)",
        "guard_off": "watching only (--no-guard): alerts are explained, nothing is done",
        "out": "run folder",
        "inject": "step {s}: FAULT injected: {what}",
        "alert": "step {s}: ALERT [{status}] {cause}",
        "collapse": "step {s}: COLLAPSE: the loss or gradient is no longer a finite number",
        "action": "step {s}: ACTION {what}",
        "rolled": "rolled back to the checkpoint of step {c} (steps {a}-{b} undone)",
        "stopped": "step {s}: the Guard STOPPED the run: skipping and rolling back did not"
        " remove the cause, so a person has to (see the advice above)",
        "live": "step {s:>4}/{n}  loss {loss}  θ {theta:.2f}  F {f:+.2f}  z {z:+6.2f}  {status}",
        "summary": "summary",
        "s_fault": "fault            {what}",
        "at_step": "step {s}",
        "s_first": "first alert      step {s}: {cause} ({rel})",
        "s_rel_after": "{k} steps after the fault began",
        "s_rel_at": "at the fault step itself, before its update was applied",
        "s_rel_before": "{k} steps BEFORE the fault (a false alarm)",
        "s_no_alert": "first alert      none",
        "s_collapse": "collapse         step {s}: the loss or gradient is no longer a finite"
        " number{chance}; the model loss was {pre} before the fault",
        "s_chance_at": "; the model loss was above a uniform guess (ln {v} = {u:.2f}) from"
        " step {b}",
        "s_no_collapse": "collapse         none: the loss stayed finite{chance}",
        "s_below_chance": " and the model loss below a uniform guess (ln {v} = {u:.2f})",
        "s_chance_only": ", but the model loss went above a uniform guess (ln {v} = {u:.2f}) at"
        " step {b}",
        "s_actions": "actions          {n}: {list}",
        "s_no_actions": "actions          none",
        "s_watch_only": "actions          none (--no-guard: watching only)",
        "s_stopped": "stopped          at step {s}; the model is the rolled-back state of step {c}",
        "s_final": "final loss       held-out {held} (train, last 20 steps: {train})",
        "s_tomb": "tombstones       {n} record{pl}, hash chain {ok}",
        "s_tomb_ok": "verified",
        "s_tomb_bad": "BROKEN: {why}",
        "s_time": "wall time        {sec:.1f} s for {n} steps",
        "files": "files",
        "hint_noguard": "Run again without --no-guard to see the Guard prevent this collapse.",
        "hint_guard": "Run again with --no-guard to see what this fault does unguarded.",
        "hint_none": "Run again with --fault lr_jump (or bad_batch, loss_scale) to see a fault.",
        "need_torch": "the demo needs PyTorch: pip install 'anet-lite[torch]'"
        " (on CPU machines: pip install torch==2.13.0 first)",
        "slow_down": "slow down (lr x{f:.3g})",
        "skip_step": "skip this update",
        "clip": "clip the gradients to {f:.3g}x their earlier level from now on",
        "rollback": "roll back to the last healthy checkpoint",
        "stop": "stop the run",
    },
    "ja": {
        "title": "anet-lite デモ：検知・説明・対処・記録",
        "fault": "故障",
        "fault_none": "なし（健全な学習）",
        "fault_lr_jump": "ステップ {s} から学習率スケジュールが学習率を {x:g} 倍にします"
        "（スケジュールの不具合）",
        "fault_bad_batch": "ステップ {s} の 1 バッチが壊れています：損失の重みが 1 ではなく"
        " {x:g}（壊れたシャード）",
        "fault_loss_scale": "ステップ {s} から損失が {x:g} 倍されます（損失スケールの不具合）",
        "model": "モデル",
        "model_desc": "文字単位の MLP（パラメータ {params:,} 個）、Python 標準ライブラリの"
        "ソース {chars:,} 文字で学習（{files}）",
        "optim": "最適化",
        "optim_desc": "SGD（モーメンタム {m:g}）、{w} ステップの線形ウォームアップ後に"
        "学習率 {lr:g}、"
        "バッチ {b}、{steps} ステップ、シード {seed}",
        "guard": "ガード",
        "guard_on": "対処あり（減速／スキップ／ロールバック／停止、"
        "{k} ステップごとにチェックポイント）",
        "guard_off": "監視のみ（--no-guard）：警報は説明しますが、何もしません",
        "out": "出力フォルダ",
        "inject": "ステップ {s}：故障を注入：{what}",
        "alert": "ステップ {s}：警報 [{status}] {cause}",
        "collapse": "ステップ {s}：崩壊：損失または勾配が有限の数ではなくなりました",
        "action": "ステップ {s}：対処 {what}",
        "rolled": "ステップ {c} のチェックポイントへロールバック（ステップ {a}〜{b} を取り消し）",
        "stopped": "ステップ {s}：ガードが学習を停止しました。スキップとロールバックでは原因が"
        "消えないため、人が直す必要があります（上の助言を参照）",
        "live": "ステップ {s:>4}/{n}  損失 {loss}  ϑ {theta:.2f}  F {f:+.2f}  z {z:+6.2f}"
        "  {status}",
        "summary": "まとめ",
        "s_fault": "故障            {what}",
        "at_step": "ステップ {s}",
        "s_first": "最初の警報      ステップ {s}：{cause}（{rel}）",
        "s_rel_after": "故障開始の {k} ステップ後",
        "s_rel_at": "故障したステップそのもの。その更新が適用される前",
        "s_rel_before": "故障の {k} ステップ前（誤警報）",
        "s_no_alert": "最初の警報      なし",
        "s_collapse": "崩壊            ステップ {s}：損失または勾配が有限の数ではなくなりました"
        "（故障前は {pre}）{chance}",
        "s_chance_at": "。モデル損失はステップ {b} から一様な当て推量（ln {v} = {u:.2f}）を"
        "超えていました",
        "s_no_collapse": "崩壊            なし：損失は有限のままでした{chance}",
        "s_below_chance": "。モデル損失も一様な当て推量（ln {v} = {u:.2f}）より低いままでした",
        "s_chance_only": "が、モデル損失はステップ {b} で一様な当て推量（ln {v} = {u:.2f}）を"
        "超えました",
        "s_actions": "対処            {n} 回：{list}",
        "s_no_actions": "対処            なし",
        "s_watch_only": "対処            なし（--no-guard：監視のみ）",
        "s_stopped": "停止            ステップ {s}。モデルはステップ {c} の状態へロールバック済み",
        "s_final": "最終損失        検証 {held}（学習、最後の 20 ステップ：{train}）",
        "s_tomb": "墓標ログ        {n} 件{pl}、ハッシュチェーン{ok}",
        "s_tomb_ok": "検証済み",
        "s_tomb_bad": "破損：{why}",
        "s_time": "所要時間        {n} ステップで {sec:.1f} 秒",
        "files": "ファイル",
        "hint_noguard": "--no-guard を外してもう一度実行すると、"
        "ガードがこの崩壊を防ぐ様子が見られます。",
        "hint_guard": "--no-guard を付けてもう一度実行すると、"
        "ガードなしでこの故障が何を起こすか見られます。",
        "hint_none": "--fault lr_jump（または bad_batch、loss_scale）で実行すると"
        "故障の例が見られます。",
        "need_torch": "デモには PyTorch が必要です：pip install 'anet-lite[torch]'"
        "（CPU マシンでは先に pip install torch==2.13.0）",
        "slow_down": "減速（学習率 ×{f:.3g}）",
        "skip_step": "この更新をスキップ",
        "clip": "以後、勾配を以前の水準の {f:.3g} 倍にクリップ",
        "rollback": "最後の健全なチェックポイントへロールバック",
        "stop": "学習を停止",
    },
}

def cause(cause: str, lang: str) -> str:
    return CAUSE_WORDS[lang].get(cause, cause)


def status(status: str, lang: str) -> str:
    """A Monitor status as the demo prints it: the report's Japanese words, the status
    name itself in English."""
    return status_word(status, lang) if lang == "ja" else status


def num(x: float) -> str:
    if not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return f"{x:.3g}" if abs(x) >= 1e4 else f"{x:.3f}"
