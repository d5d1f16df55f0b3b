"""The cause registry: every cause a detector or rule can name, in one place.

Each ``Cause`` carries what every consumer needs: the ``status`` it implies, the policy's
``first_action`` (the rung of the ladder an incident of this cause starts on), a short
name for summaries and reports, and the sentence and advice ``explain`` gives, in
English and Japanese (``{key}`` placeholders are evidence numbers; ``{nums}`` the
snapshot's θ, F_Total, z and step). Policy, explain, report and sinks read it; a
contract test runs every entry through each of them (tests/monitor/test_causes.py).

Adding a cause = one entry here. Entries with ``variant_of`` are alternative wordings
of another cause that ``explain`` picks from the evidence (e.g. ``compounding`` for a
divergence reached by compounding growth); they are never a snapshot's cause.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

__all__ = ["CAUSES", "FIRST_ACTIONS", "STATUSES", "Cause", "cause"]

STATUSES = ("precursor", "collapsed", "drifting")
FIRST_ACTIONS = ("slow_down", "skip_step", "rollback")


class Cause(NamedTuple):
    name: str
    status: str
    first_action: str
    short: Tuple[str, str]  # (en, ja)
    en: Tuple[str, str]  # (what happened, what to do)
    ja: Tuple[str, str]
    variant_of: Optional[str] = None


def _c(
    name: str,
    status: str,
    first_action: str,
    short: Tuple[str, str],
    *,
    en: Tuple[str, str],
    ja: Tuple[str, str],
    variant_of: Optional[str] = None,
) -> Cause:
    return Cause(name, status, first_action, short, en, ja, variant_of)


_ALL = (
    _c(
        'non_finite',
        'collapsed',
        'skip_step',
        ('the loss or gradient became non-finite', '損失または勾配が非有限'),
        en=('The loss or gradient is no longer a finite number (numeric overflow, e.g. a loss-scale or fp16 problem){nums}.', 'Skip this update and roll back to the last healthy state; check the loss scale and mixed-precision settings.'),
        ja=('損失または勾配が有限の数ではなくなりました（数値のオーバーフロー、損失スケールや fp16 の問題）{nums}。', 'この更新をスキップし、最後の健全な状態へロールバックしてください。損失スケールと混合精度の設定を確認してください。'),
    ),
    _c(
        'lr_jump',
        'precursor',
        'slow_down',
        ('a learning-rate jump (schedule bug)', '学習率の跳ね上がり（スケジュールの不具合）'),
        en=('The learning rate jumped to {lr_jump:.3g}x the largest value the schedule used before (lr={lr:.3g}) — a schedule bug, not a planned change{nums}.', 'Restore the intended learning rate now; if the precursor fires as well, roll back.'),
        ja=('学習率がスケジュールのこれまでの最大値の {lr_jump:.3g} 倍（lr={lr:.3g}）に跳ね上がりました。計画された変更ではなくスケジュールの不具合です{nums}。', 'すぐに本来の学習率へ戻してください。前駆も出ていればロールバックへ。'),
    ),
    _c(
        'bad_batch',
        'precursor',
        'skip_step',
        ('a bad batch (one-step loss jump)', '不良バッチ（1 ステップでの損失の跳ね上がり）'),
        en=('One batch sent the loss to {loss_ratio:.3g}x its recent level at once — likely a bad batch or corrupted data{nums}.', 'Skip this update and check that batch; roll back if the next steps do not recover.'),
        ja=('1 つのバッチで損失が直近水準の {loss_ratio:.3g} 倍になりました。不良バッチか壊れたデータの可能性があります{nums}。', 'この更新をスキップし、そのバッチを確認してください。次の数ステップで戻らなければロールバックへ。'),
    ),
    _c(
        'bad_batch_undeclared',
        'precursor',
        'skip_step',
        ('a bad batch (the loss far above the first loss, no change declared)', '不良バッチ（最初の損失を大きく上回り、変更の宣言なし）'),
        en=("One batch sent the loss to {first_loss_ratio:.3g}x the run's first loss at once, and no change of data was declared — a bad batch or corrupted data (labels or inputs that contradict what the model learned){nums}.", 'Skip this update and check that batch and its shard; roll back if the next steps do not recover. If the data changed on purpose, declare it with mark().'),
        variant_of='bad_batch',
        ja=('1 つのバッチで損失が最初の損失の {first_loss_ratio:.3g} 倍になりました。データの変更は宣言されていません。不良バッチか壊れたデータ（モデルが学んだことと矛盾するラベルや入力）です{nums}。', 'この更新をスキップし、そのバッチとシャードを確認してください。次の数ステップで戻らなければロールバックへ。意図したデータの変更なら mark() で宣言してください。'),
    ),
    _c(
        'grad_explosion',
        'precursor',
        'skip_step',
        ('a gradient explosion', '勾配爆発'),
        en=('The gradient norm jumped to {grad_ratio:.3g}x its recent level in one step — a bad batch or an exploding gradient{nums}.', 'Skip this update; if it repeats, lower the learning rate or clip gradients.'),
        ja=('勾配ノルムが 1 ステップで直近水準の {grad_ratio:.3g} 倍に跳ねました。不良バッチか勾配爆発です{nums}。', 'この更新をスキップしてください。繰り返すなら学習率を下げるか勾配をクリップしてください。'),
    ),
    _c(
        'update_blowup',
        'precursor',
        'skip_step',
        ('an update blow-up', '更新の暴走'),
        en=("The parameter update became {update_ratio:.3g}x larger than usual for this learning rate — the optimizer is unstable (e.g. Adam's ε/β2){nums}.", 'Skip this update and lower the learning rate; roll back if it repeats.'),
        ja=('この学習率にしてはパラメータ更新が通常の {update_ratio:.3g} 倍に大きくなりました。オプティマイザが不安定です（Adam の ε/β2 など）{nums}。', 'この更新をスキップし、学習率を下げてください。繰り返すならロールバックへ。'),
    ),
    _c(
        'oversized_update',
        'precursor',
        'slow_down',
        ('an update too large for the weights', '重みに対して大きすぎる更新'),
        en=('One update moved the parameters by {rel_update:.1%} of their norm (the limit is {rel_update_limit:.0%}) — the learning rate is far too high for this model, from the start (no warm-up?) or after a schedule or loss-scale bug{nums}.', 'Lower the learning rate now (or add a warm-up); roll back if the loss follows.'),
        ja=('1 回の更新でパラメータがそのノルムの {rel_update:.1%} も動きました（上限 {rel_update_limit:.0%}）。このモデルには学習率が高すぎます。最初から（ウォームアップなし？）か、スケジュールや損失スケールの不具合の後です{nums}。', '今すぐ学習率を下げてください（またはウォームアップを入れてください）。損失も上がるならロールバックへ。'),
    ),
    _c(
        'oscillation',
        'precursor',
        'slow_down',
        ('oscillation (loss rising and jittering)', '振動（損失が上昇しつつ揺れる）'),
        en=('The loss is rising and jittering (z={precursor_z:.2f}) — the learning rate is likely too high and training is oscillating{nums}.', 'Lower the learning rate step by step; if it keeps firing, roll back.'),
        ja=('損失が上昇しつつ揺れています（z={precursor_z:.2f}）。学習率が高すぎて振動している可能性があります{nums}。', '学習率を段階的に下げてください。出続けるならロールバックへ。'),
    ),
    _c(
        'divergence',
        'precursor',
        'slow_down',
        ('divergence (loss rising)', '発散（損失の上昇）'),
        en=('The loss is rising steadily above its recent level (z={precursor_z:.2f}) — training is starting to diverge{nums}.', 'Lower the learning rate step by step; if it keeps rising, roll back.'),
        ja=('損失が直近水準より着実に上昇しています（z={precursor_z:.2f}）。発散の始まりです{nums}。', '学習率を段階的に下げてください。上がり続けるならロールバックへ。'),
    ),
    _c(
        'compounding',
        'precursor',
        'slow_down',
        ('divergence (compounding growth)', '発散（複合的な増大）'),
        variant_of='divergence',
        en=('The gradient norm ({grad_ratio:.3g}x its recent level) and the update have grown step after step, the loss with them or a step behind — training is diverging{nums}.', "Lower the learning rate now and check the loss's sign and scale; roll back if it keeps growing."),
        ja=('勾配ノルム（直近水準の{grad_ratio:.3g}倍）と更新がステップごとに揃って増えています（損失も一緒に、または一歩遅れて増えます）。発散しています{nums}。', '今すぐ学習率を下げ、損失の符号とスケールを確認してください。増え続けるならロールバックへ。'),
    ),
    _c(
        'grad_growth',
        'precursor',
        'slow_down',
        ('persistent gradient growth', '勾配の持続的な増大'),
        en=('The gradient norm has stayed far above its recent level for several steps — a divergence that the loss does not show yet{nums}.', 'Lower the learning rate now, before the loss follows.'),
        ja=('勾配ノルムが数ステップにわたり直近水準を大きく上回っています。損失にはまだ出ていない発散です{nums}。', '損失に現れる前に、今すぐ学習率を下げてください。'),
    ),
    _c(
        'ascent',
        'precursor',
        'slow_down',
        ('going uphill (coherent updates, rising loss)', '上り坂（揃った更新と損失の上昇）'),
        en=('The updates follow the gradient far more closely than usual (processivity {proc_lift:+.2f} above its level) while they grow step after step and the loss climbs (or lags a step behind) — the optimizer is going uphill: a gradient-sign bug or a loss being maximised{nums}.', "Check the loss's sign and any gradient hooks; roll back to the last healthy state."),
        ja=('更新が普段よりはるかに勾配に沿って動き（プロセシビティが水準より {proc_lift:+.2f}）、更新が大きくなり続け、損失が上昇しています（または一歩遅れて上昇します）。オプティマイザが坂を上っています。勾配の符号の不具合か、損失を最大化しています{nums}。', '損失の符号と勾配フックを確認し、最後の健全な状態へロールバックしてください。'),
    ),
    _c(
        'zero_gradient',
        'precursor',
        'skip_step',
        ('a gradient of exactly zero (saturated outputs)', 'ちょうどゼロの勾配（出力の飽和）'),
        en=('The gradient is exactly zero although the run had a healthy gradient level — no example of this batch moves the weights: the outputs are saturated (inputs far out of range, e.g. a shard scaled by mistake), every unit is dead, or the gradients underflow (fp16 without loss scaling){nums}.', "Skip this update and check this batch's inputs and their scaling; roll back if it repeats."),
        ja=('健全な勾配水準があった学習で、勾配がちょうどゼロになりました。このバッチのどの例も重みを動かしません。出力が飽和している（入力が範囲外、たとえば誤ってスケールされたシャード）か、すべてのユニットが死んでいるか、勾配がアンダーフローしています（損失スケーリングなしの fp16）{nums}。', 'この更新をスキップし、このバッチの入力とそのスケーリングを確認してください。繰り返すならロールバックへ。'),
    ),
    _c(
        'stagnation',
        'drifting',
        'slow_down',
        ('stagnation (gradient collapsed)', '停滞（勾配の消失）'),
        en=('The gradient norm has collapsed ~100x below its healthy level while the loss stays flat — units have died or training has stalled{nums}.', 'Roll back to before the collapse and lower the learning rate; check for dead ReLUs.'),
        ja=('損失が高いまま平らで、勾配ノルムが健全時の約 1/100 に落ちました。ユニットが死んだか学習が止まっています{nums}。', '崩壊前へロールバックし、学習率を下げてください。死んだ ReLU を確認してください。'),
    ),
    _c(
        'early_divergence',
        'precursor',
        'slow_down',
        ('the loss climbing from the first step', '最初のステップからの損失の上昇'),
        en=('The loss climbed to {loss_ratio:.3g}x its first value within warm-up — the learning rate is likely too high from the start (no warm-up?){nums}.', 'Stop and restart with a lower learning rate or a warm-up.'),
        ja=('ウォームアップ中に損失が最初の値の {loss_ratio:.3g} 倍まで上がりました。最初から学習率が高すぎる可能性があります（ウォームアップなし？）{nums}。', '停止し、学習率を下げるかウォームアップを入れて再開してください。'),
    ),
    _c(
        'fingerprint_shift',
        'drifting',
        'slow_down',
        ('a noise-fingerprint shift', 'ノイズ指紋のずれ'),
        en=('The gradient-noise fingerprint no longer matches the healthy reference (θ={theta:.2f}) — the training dynamics have shifted{nums}.', 'Lower the learning rate / temperature / LoRA rank step by step and watch θ.'),
        ja=('勾配ノイズの指紋が健全な参照と一致しなくなりました（ϑ={theta:.2f}）。学習の力学が変わっています{nums}。', '学習率／温度／LoRA ランクを段階的に下げ、ϑ を見守ってください。'),
    ),
    _c(
        "lr_ramp",
        "precursor",
        "slow_down",
        ("the learning rate rose above the schedule's peak", "学習率がスケジュールの最大値を超えて上昇"),
        en=("The learning rate has risen to {lr_ramp:.3g}x the peak the schedule reached after its warm-up (lr={lr:.3g}) — a schedule that keeps growing is a bug (units, a sign, a restart that never decays){nums}.", "Restore the intended schedule now; roll back if the loss has followed."),
        ja=("学習率がウォームアップ後のスケジュールの最大値の {lr_ramp:.3g} 倍（lr={lr:.3g}）まで上がりました。上がり続けるスケジュールは不具合です（単位、符号、減衰しない再起動）{nums}。", "すぐに本来のスケジュールへ戻してください。損失も上がっていればロールバックへ。"),
    ),
    _c(
        "slow_rise",
        "precursor",
        "slow_down",
        ("a slow rise of the loss level", "損失水準のゆっくりした上昇"),
        en=("The loss level has crept up for {rise_steps:.0f} steps to {level_ratio:.3g}x its in-control level (CUSUM {cusum:.0f} over the threshold {cusum_h:.0f}) — a slow divergence that no single step shows{nums}.", "Lower the learning rate step by step now; if it keeps rising, roll back. Check the schedule and the weight decay."),
        ja=("損失の水準が {rise_steps:.0f} ステップにわたり少しずつ上がり、管理状態の水準の {level_ratio:.3g} 倍になりました（CUSUM {cusum:.0f}、しきい値 {cusum_h:.0f}）。どの 1 ステップにも表れないゆっくりした発散です{nums}。", "今すぐ学習率を段階的に下げてください。上がり続けるならロールバックへ。スケジュールと重み減衰を確認してください。"),
    ),
    _c(
        "slow_rise_given_back",
        "precursor",
        "slow_down",
        ("a slow rise of the loss level", "損失水準のゆっくりした上昇"),
        variant_of="slow_rise",
        en=("The loss level has crept up for {rise_steps:.0f} steps and given back {given_back:.0%} of what the run had learned since its first loss (CUSUM {cusum:.0f} over the threshold {cusum_h:.0f}) — a slow divergence that no single step shows{nums}.", "Lower the learning rate step by step now; if it keeps rising, roll back. Check the schedule and the weight decay."),
        ja=("損失の水準が {rise_steps:.0f} ステップにわたり少しずつ上がり、最初の損失から学習で下げた分の {given_back:.0%} を失いました（CUSUM {cusum:.0f}、しきい値 {cusum_h:.0f}）。どの 1 ステップにも表れないゆっくりした発散です{nums}。", "今すぐ学習率を段階的に下げてください。上がり続けるならロールバックへ。スケジュールと重み減衰を確認してください。"),
    ),
    _c(
        "scale_jump",
        "precursor",
        "skip_step",
        ("gradient and update jumped, the loss far less", "勾配と更新が跳ね上がり、損失はほとんど上がらず"),
        en=("The gradient ({grad_ratio:.3g}x its level) and the update ({update_ratio:.3g}x) jumped together, far more than the loss of that step rose: not harder data — the gradient's computation or the optimizer changed (gradients summed over accumulation steps instead of averaged, a loss scale, layers unfrozen, a wrong learning rate){nums}.", "Skip this update; check gradient accumulation, loss scaling and which parameters are trainable."),
        ja=("勾配（水準の {grad_ratio:.3g} 倍）と更新（{update_ratio:.3g} 倍）が、そのステップの損失の上昇をはるかに超えて同時に跳ね上がりました。難しいデータではなく、勾配の計算かオプティマイザが変わっています（累積勾配を平均せず合計、損失スケール、凍結解除された層、誤った学習率）{nums}。", "この更新をスキップし、勾配累積、損失スケーリング、学習対象のパラメータを確認してください。"),
    ),
    _c(
        "rising_trend",
        "precursor",
        "slow_down",
        ("a steady rise of the loss", "損失の着実な上昇"),
        en=("The loss has kept rising for {trend_steps:.0f} steps: its level is {trend_ratio:.3g}x what it was half that time ago, with a significant upward slope in each half (t = {trend_t:.2g}) — a slow divergence, not noise{nums}.", "Lower the learning rate step by step now; if it keeps rising, roll back. Check the schedule, the weight decay and the optimizer settings."),
        ja=("損失が {trend_steps:.0f} ステップ上がり続けています。水準はその半分前の {trend_ratio:.3g} 倍で、前半・後半ともに有意な上昇傾向です（t = {trend_t:.2g}）。ノイズではなく、ゆっくりした発散です{nums}。", "今すぐ学習率を段階的に下げてください。上がり続けるならロールバックへ。スケジュール、重み減衰、オプティマイザの設定を確認してください。"),
    ),
    _c(
        "regression",
        "precursor",
        "slow_down",
        ("the loss back far above its best level", "損失が最良水準を大きく上回って戻った"),
        en=("The loss has climbed back to {best_ratio:.3g}x the best level this run reached and has stayed there for {far_steps:.0f} steps — the training done so far is being undone{nums}.", "Lower the learning rate now and roll back to the last healthy state if it does not come down."),
        ja=("損失がこの学習の最良水準の {best_ratio:.3g} 倍まで戻り、{far_steps:.0f} ステップそのままです。ここまでの学習が失われつつあります{nums}。", "今すぐ学習率を下げ、下がらなければ最後の健全な状態へロールバックしてください。"),
    ),
    _c(
        "loss_blowup",
        "precursor",
        "rollback",
        ("the loss an order of magnitude above its best", "損失が最良水準の 10 倍以上"),
        en=("The loss has stood an order of magnitude above where the run has been ({best_ratio:.3g}x its best level, {first_ratio:.3g}x its first loss) for {blow_steps} steps — far beyond any spike: training has diverged{nums}.", "Roll back to the last healthy state and lower the learning rate; check the data and the loss scale."),
        ja=("損失がこれまでの水準より一桁以上高い状態（最良水準の {best_ratio:.3g} 倍、最初の損失の {first_ratio:.3g} 倍）が {blow_steps} ステップ続いています。スパイクではなく、学習は発散しています{nums}。", "最後の健全な状態へロールバックし、学習率を下げてください。データと損失スケールを確認してください。"),
    ),
    _c(
        "worse_than_untrained",
        "precursor",
        "rollback",
        ("the loss worse than the untrained model's", "損失が学習前のモデルより悪い"),
        en=("After the run had learned, the loss has stood at {first_ratio:.3g}x its first (untrained) loss for {worse_steps} steps: the model does worse than it did before training — confidently wrong (it learned corrupted data or labels, or its weights were damaged){nums}.", "Roll back to the last healthy state and check the batches just before (labels, shuffling, a corrupted shard); if the loss was rising before, lower the learning rate."),
        ja=("学習が進んだ後、損失が最初（学習前）の損失の {first_ratio:.3g} 倍の状態で {worse_steps} ステップ続いています。モデルは学習前より悪く、自信を持って誤っています（壊れたデータやラベルを学習した、または重みが損なわれた）{nums}。", "最後の健全な状態へロールバックし、直前のバッチ（ラベル、シャッフル、壊れたシャード）を確認してください。その前から損失が上がっていたなら学習率を下げてください。"),
    ),
    _c(
        "runaway_weights",
        "precursor",
        "slow_down",
        ("runaway growth of the weights", "重みの暴走的な増大"),
        en=("The weights' norm grew {param_growth:.3g}x in 50 steps and grows {param_growth_per_step:.2%} per step, {growth_accel:.3g}x this run's slowest growth, without slowing down — a runaway (weight decay with the wrong sign or scale, an optimizer pushed one way, growing logits){nums}.", "Check the weight decay's sign and scale and any gradient hooks; lower the learning rate, and roll back if the loss follows."),
        ja=("重みのノルムが 50 ステップで {param_growth:.3g} 倍になり、1 ステップあたり {param_growth_per_step:.2%} ずつ（この学習で最も遅かった増え方の {growth_accel:.3g} 倍）、減速せずに増え続けています。暴走です（符号や大きさを誤った重み減衰、一方向に押されるオプティマイザ、増大するロジット）{nums}。", "重み減衰の符号と大きさ、勾配フックを確認し、学習率を下げてください。損失も上がればロールバックへ。"),
    ),
    _c(
        "shrinking_weights",
        "precursor",
        "slow_down",
        ("the weights shrinking fast", "重みの急速な縮小"),
        en=("The weights' norm fell to {param_shrink:.3g}x of what it was 25 steps ago — the weights are being pulled to zero (a weight decay many times too strong or applied twice, parameters rescaled by mistake){nums}.", "Check the weight decay's scale and that it is applied once, and anything that rescales parameters; lower the learning rate, and roll back if the loss follows."),
        ja=("重みのノルムが 25 ステップ前の {param_shrink:.3g} 倍まで小さくなりました。重みがゼロへ引き寄せられています（何倍も強すぎる、または二重にかかった重み減衰、誤ったパラメータの再スケール）{nums}。", "重み減衰の大きさと、それが一度だけかかっていることを確認し、パラメータを再スケールする処理も確認してください。学習率を下げ、損失も上がればロールバックへ。"),
    ),
)

CAUSES: Dict[str, Cause] = {c.name: c for c in _ALL}


def cause(name: str) -> Optional[Cause]:
    """The registry entry for ``name`` (None for an unknown name)."""
    return CAUSES.get(name)
