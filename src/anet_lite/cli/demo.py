"""``anet-lite demo``: detect, explain, act and record, on a real model, in one command.

A small character-level MLP language model trains on CPU on the source text of Python's own
standard library (no download), with the ``Guard`` watching every optimizer step. At a fixed
step a real fault is injected; the Monitor's alert is printed in words, the Guard acts (slow
down, skip the update, roll back, stop) and every action goes to a hash-chained tombstone
log. ``--no-guard`` runs the identical fault with the Guard watching only, so the collapse it
prevents is visible. The run folder holds metrics.csv, metrics.jsonl, tombstones.jsonl,
meta.json and report.html (see docs/demo.md).

``run_demo(argv) -> int`` parses its own arguments (``anet-lite demo ...`` calls it) and
returns the exit code: 0 when the demo ran (whatever the Guard did), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from ..report.words import fit_precision
from ._demo_words import UI as _UI
from ._demo_words import cause as _cause
from ._demo_words import num as _num
from ._demo_words import status as _status

__all__ = [
    "FAULTS",
    "build_parser",
    "load_text",
    "run_demo",
]


FAULTS = ("lr_jump", "bad_batch", "loss_scale", "none")
DEFAULT_STEPS = 500
MIN_STEPS = 250
FIRST_FAULT_STEP = 200  # the lr warm-up (100 steps), then the Monitor's healthy reference

# The model, the data and the optimizer (chosen so that every fault, unguarded, blows up
# within a few dozen steps; measured numbers in docs/demo.md).
CONTEXT, EMBED, HIDDEN, BATCH = 8, 32, 256, 64
LR, MOMENTUM, WARMUP = 0.1, 0.9, 100  # SGD with momentum; linear lr warm-up over WARMUP steps
CHECKPOINT_EVERY = 50
LR_FACTOR = 100.0  # lr_jump: the schedule multiplies the lr by this from the fault step on
BAD_WEIGHT = 1e4  # bad_batch: that one batch's per-example loss weights are garbage (1e4)
LOSS_SCALE = 1e4  # loss_scale: the loss is multiplied by this from the fault step on
EVAL_EXAMPLES, EVAL_SEED = 2048, 1234
PRECISION = "fp32"  # no loss scaler: explanations carry no loss-scale advice
TEXT_FILES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "shlex.py")

_EPILOG = """examples:
  anet-lite demo                          # lr x100 at step 250: detected, slowed down, recovered
  anet-lite demo --no-guard               # the same fault, watched only: the loss blows up
  anet-lite demo --fault bad_batch --lang ja
  anet-lite demo --fault none --steps 300 --out /tmp/healthy

faults (injected at --fault-step, default: half of --steps):
  lr_jump     the lr schedule multiplies the lr by 100 from that step on (a schedule bug)
  bad_batch   one corrupted batch: its per-example loss weights are 1e4 instead of 1
  loss_scale  the loss is multiplied by 1e4 from that step on (a loss-scale bug)
  none        a healthy run

Writes DIR (default: ./anet-demo-<fault>, ./anet-demo-<fault>-noguard with --no-guard,
and -ja appended with --lang ja) with metrics.csv, metrics.jsonl, tombstones.jsonl,
meta.json and report.html. When the same run was made with the other --no-guard setting
(DIR-noguard beside DIR), the report shows its loss curve too.

exit codes:
  0  the demo ran (whatever the Guard did)
  2  usage error, or PyTorch is not installed
"""

# ---- arguments ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anet-lite demo",
        description="Train a small character-level model on CPU (Python's standard library "
        "source as data; no download), inject a real fault mid-run, and watch anet-lite "
        "detect it before the loss blows up, explain it, act on it and record it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "fault_pos",
        nargs="?",
        choices=FAULTS,
        metavar="FAULT",
        help="the fault, as a positional shorthand for --fault",
    )
    p.add_argument("--fault", choices=FAULTS, help="the fault to inject (default: lr_jump)")
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="watch and explain only (Guard(act=False)): see the collapse the Guard prevents",
    )
    p.add_argument("--lang", default="en", choices=("en", "ja"), help="language (default: en)")
    p.add_argument("--seed", type=int, default=0, help="seed for the model, data order (default 0)")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"training steps (default {DEFAULT_STEPS}, at least {MIN_STEPS})",
    )
    p.add_argument(
        "--fault-step",
        type=int,
        metavar="N",
        help=f"the step at which the fault begins (default: half of --steps, at least "
        f"{FIRST_FAULT_STEP})",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: ./anet-demo-<fault>[-noguard][-ja]); the files the demo "
        "writes in it are replaced",
    )
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress, alerts or actions while it runs; only the summary at the end",
    )
    return p


def _parse(argv: Sequence[str]) -> Tuple[Optional[argparse.Namespace], int]:
    argv = list(argv)
    if argv[:1] == ["--"]:  # `anet-lite demo -- --fault x` passes the "--" through
        argv = argv[1:]
    p = build_parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): return, never exit
        code = e.code
        return None, code if isinstance(code, int) else (0 if code is None else 2)
    if args.fault and args.fault_pos and args.fault != args.fault_pos:
        p.print_usage(sys.stderr)
        sys.stderr.write(f"{p.prog}: error: FAULT {args.fault_pos} and --fault {args.fault}\n")
        return None, 2
    args.fault = args.fault or args.fault_pos or "lr_jump"
    if args.steps < MIN_STEPS:
        p.print_usage(sys.stderr)
        sys.stderr.write(f"{p.prog}: error: --steps must be at least {MIN_STEPS}\n")
        return None, 2
    if args.fault_step is None:
        args.fault_step = max(args.steps // 2, FIRST_FAULT_STEP)
    lo = FIRST_FAULT_STEP
    if not lo <= args.fault_step <= args.steps:
        p.print_usage(sys.stderr)
        sys.stderr.write(
            f"{p.prog}: error: --fault-step must be in [{lo}, --steps]: the Monitor needs "
            f"a healthy reference after the {WARMUP}-step lr warm-up first (from step ~152)\n"
        )
        return None, 2
    if args.out is None:  # one folder per fault, guard setting and language
        args.out = f"anet-demo-{args.fault}" + ("-noguard" if args.no_guard else "")
        args.out += "" if args.lang == "en" else f"-{args.lang}"
    return args, 0


# ---- data and model -------------------------------------------------------------------------


def load_text() -> Tuple[str, List[str]]:
    """Source text of a few standard-library modules (falls back to anet_lite's own source)."""
    root = os.path.dirname(os.__file__)
    parts, used = [], []
    for name in TEXT_FILES:
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                parts.append(f.read())
            used.append(name)
        except OSError:
            continue
    if sum(map(len, parts)) < 40_000:  # a stripped Python without .py sources
        here = Path(__file__).resolve().parent
        for p in sorted(here.rglob("*.py")):
            parts.append(p.read_text(encoding="utf-8"))
            used.append(f"anet_lite/{p.relative_to(here).as_posix()}")
    return "".join(parts), used


class _Data:
    """Train on the first 90 % of the text, evaluate on a fixed sample of the last 10 %."""

    def __init__(self, torch: Any, seed: int) -> None:
        text, self.files = load_text()
        vocab = sorted(set(text))
        self.vocab = len(vocab)
        index = {c: i for i, c in enumerate(vocab)}
        self.ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        self.chars = len(text)
        self.split = int(0.9 * len(text))
        self.offsets = torch.arange(CONTEXT)
        self.gen = torch.Generator().manual_seed(seed)  # fixed batch order for the seed
        g = torch.Generator().manual_seed(EVAL_SEED)  # the same held-out sample for every seed
        i = torch.randint(self.split, len(text) - CONTEXT - 1, (EVAL_EXAMPLES,), generator=g)
        self.eval_x, self.eval_y = self.ids[i[:, None] + self.offsets], self.ids[i + CONTEXT]
        self.torch = torch

    def batch(self) -> Tuple[Any, Any]:
        torch = self.torch
        i = torch.randint(0, self.split - CONTEXT - 1, (BATCH,), generator=self.gen)
        return self.ids[i[:, None] + self.offsets], self.ids[i + CONTEXT]


def _model(torch: Any, vocab: int) -> Any:
    nn = torch.nn
    return nn.Sequential(
        nn.Embedding(vocab, EMBED),
        nn.Flatten(),
        nn.Linear(CONTEXT * EMBED, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, vocab),
    )


# ---- output ---------------------------------------------------------------------------------


class _Progress:
    """tqdm on stderr when it is a terminal (messages above the bar); else periodic lines."""

    def __init__(self, total: int, out: TextIO, quiet: bool, every: int) -> None:
        self.out, self.quiet, self.every, self.total = out, quiet, every, total
        self.bar: Any = None
        self.tqdm: Any = None
        if quiet or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.tqdm = tqdm  # the bar starts at the first step, below the header

    def say(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def step(self, step: int, live: str) -> None:
        if self.quiet:
            return
        if self.tqdm is not None and self.bar is None:
            self.bar = self.tqdm(
                total=self.total, unit="step", file=sys.stderr, mininterval=0.2, dynamic_ncols=True
            )
        if self.bar is not None:
            self.bar.update(1)
            if step % 5 == 0 or step == self.total:
                self.bar.set_postfix_str(live, refresh=False)
        elif step % self.every == 0 or step == self.total:
            self.say(live)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = self.tqdm = None


def _action_words(action: Any, lang: str) -> str:
    """What the Guard does and why, e.g. "slow down (lr x0.01), reason: ... [slow_down 1/2]"."""
    what = _UI[lang][action.kind].format(f=action.factor)
    cause = _cause(str(action.evidence.get("cause", "")), lang)
    m = re.search(r"\[[a-z_]+ \d+/\d+\]$", action.reason)
    rung = f" {m.group(0)}" if m else ""
    if lang == "ja":
        return f"{what}、理由：{cause}{rung}"
    return f"{what}, reason: {cause}{rung}"


# ---- the run --------------------------------------------------------------------------------


def _clear(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "metrics.jsonl", "tombstones.jsonl", "meta.json", "report.html"):
        if (out / name).is_file():
            (out / name).unlink()  # a fresh run, not an append to an old one


def run_demo(argv: Optional[Sequence[str]] = None) -> int:
    """``anet-lite demo [FAULT] [--fault F] [--no-guard] [--lang L] [--seed S] ...``."""
    args, code = _parse(sys.argv[1:] if argv is None else argv)
    if args is None:
        return code
    ui = _UI[args.lang]
    try:
        import torch
    except ImportError:
        sys.stderr.write(f"anet-lite demo: {ui['need_torch']}\n")
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        sys.stderr.write(f"anet-lite demo: --out {out}: exists and is not a folder\n")
        return 2
    try:
        _clear(out)
    except OSError as e:
        sys.stderr.write(f"anet-lite demo: --out {out}: {e.strerror or e}\n")
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and polite on a shared machine
    try:
        result = _train(args, out, torch)
    finally:
        torch.set_num_threads(threads)
    _finish(args, out, result)
    return 0


def _seed(seed: int, torch: Any) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


class _Run:
    """One demo run: ``setup`` (data, model, optimizer, Guard), ``step`` (train one step,
    ``inject`` the fault), ``record`` (what the Monitor and the Guard said), ``result``."""

    def __init__(self, args: argparse.Namespace, out: Path, torch: Any) -> None:
        self.args, self.out, self.torch = args, out, torch
        self.lang, self.ui = args.lang, _UI[args.lang]
        self.fault, self.at, self.steps = args.fault, args.fault_step, args.steps
        self.ce_hist: List[float] = []
        self.alerts: List[Dict[str, Any]] = []
        self.actions: List[Dict[str, Any]] = []
        self.causes_seen: set = set()
        self.n_incidents = self.n_actions = self.n_rolled = 0
        self.stopped: Optional[Dict[str, Any]] = None
        self.setup()

    def setup(self) -> None:
        from ..monitor import Monitor
        from ..records.outputs import RunLog
        from ..report.data import RunData
        from ..torch import Guard

        torch, args, out = self.torch, self.args, self.out
        _seed(args.seed, torch)
        self.data = _Data(torch, args.seed)
        self.model = _model(torch, self.data.vocab)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        jump, at = (LR_FACTOR if self.fault == "lr_jump" else 1.0), self.at

        def schedule(epoch: int) -> float:  # epoch = optimizer steps taken so far
            warm = min(1.0, (epoch + 1) / WARMUP)
            return warm * (jump if epoch + 1 >= at else 1.0)

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.run_log = RunLog(out / "metrics.csv", out / "metrics.jsonl")
        self.guard = Guard(
            self.model,
            self.opt,
            monitor=Monitor(),
            scheduler=self.sched,
            tombstones=out / "tombstones.jsonl",
            run_log=self.run_log,
            checkpoint_every=CHECKPOINT_EVERY,
            act=not args.no_guard,
        )
        self.report = RunData(lang=self.lang, precision=PRECISION)
        self.params = sum(p.numel() for p in self.model.parameters())
        x = {"lr_jump": LR_FACTOR, "bad_batch": BAD_WEIGHT}.get(self.fault, LOSS_SCALE)
        none = self.fault == "none"
        self.what = (
            self.ui["fault_none"] if none else self.ui[f"fault_{self.fault}"].format(s=at, x=x)
        )
        self.prog = _Progress(self.steps, sys.stdout, args.quiet, max(1, self.steps // 10))

    def header(self) -> None:
        ui, args, data = self.ui, self.args, self.data
        guard = ui["guard_off"] if args.no_guard else ui["guard_on"].format(k=CHECKPOINT_EVERY)
        files = ", ".join(data.files)
        optim = dict(m=MOMENTUM, lr=LR, w=WARMUP, b=BATCH, steps=self.steps, seed=args.seed)
        for line in (
            ui["title"],
            f"  {ui['fault']}: {self.fault} — {self.what}",
            f"  {ui['model']}: "
            + ui["model_desc"].format(params=self.params, chars=data.chars, files=files),
            f"  {ui['optim']}: " + ui["optim_desc"].format(**optim),
            f"  {ui['guard']}: {guard}",
            f"  {ui['out']}: {self.out}",
            "",
        ):
            self.prog.say(line)

    def inject(self, step: int, per: Any, ce: Any) -> Any:
        """The loss the training loop backpropagates at ``step``, with the fault in it."""
        if self.fault == "bad_batch" and step == self.at:
            return (per * BAD_WEIGHT).mean()  # garbage per-example weights
        if self.fault == "loss_scale" and step >= self.at:
            return ce * LOSS_SCALE
        return ce

    def step(self, step: int) -> bool:
        """Train one step; False when the Guard stopped the run."""
        from ..torch import GuardStop

        torch, guard = self.torch, self.guard
        x, y = self.data.batch()
        per = torch.nn.functional.cross_entropy(self.model(x), y, reduction="none")
        ce = per.mean()
        loss = self.inject(step, per, ce)
        if step == self.at and self.fault != "none":
            self.prog.say(self.ui["inject"].format(s=step, what=self.what))
        loss.backward()
        guard.observe(loss)
        self.ce_hist.append(float(ce.detach()))
        try:
            self.opt.step()
        except GuardStop as stop:
            self.stopped = {"step": step, "reason": stop.action.reason}
        snap = guard.last
        fresh = snap is not None and snap.step == step
        if fresh:
            self.record(step, snap)
        self.record_actions()
        if self.stopped is not None:
            self.prog.say(self.ui["stopped"].format(s=step))
            return False
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if snap is not None:
            self.live(step, snap)
        return True

    def record(self, step: int, snap: Any) -> None:
        """The snapshot into the report; a new incident's causes printed with their words."""
        report, lang, ui = self.report, self.lang, self.ui
        before = report.collapse_step
        report.add(snap)
        if snap.alert:
            cause = str(snap.evidence.get("cause") or snap.status)
            self.alerts.append({"step": step, "status": snap.status, "cause": cause})
            if len(report.incidents) > self.n_incidents:
                self.causes_seen = set()
            self.n_incidents = len(report.incidents)
            if cause not in self.causes_seen and len(self.causes_seen) < 6:
                self.causes_seen.add(cause)
                status = _status(snap.status, lang)
                self.prog.say(ui["alert"].format(s=step, status=status, cause=_cause(cause, lang)))
                self.prog.say("    " + fit_precision(snap.explain(lang), lang, PRECISION))
        if before is None and report.collapse_step is not None:
            self.prog.say(ui["collapse"].format(s=report.collapse_step))

    def record_actions(self) -> None:
        guard = self.guard
        for a in guard.actions[self.n_actions :]:
            rec = {
                "step": a.step,
                "kind": a.kind,
                "factor": a.factor,
                "cause": str(a.evidence.get("cause", "")),
                "reason": a.reason,
            }
            self.prog.say(self.ui["action"].format(s=a.step, what=_action_words(a, self.lang)))
            if a.kind == "rollback" and len(guard.rolled_back) > self.n_rolled:
                first, last = guard.rolled_back[-1]
                rec["checkpoint_step"] = first - 1
                self.prog.say("    " + self.ui["rolled"].format(c=first - 1, a=first, b=last))
            self.n_rolled = len(guard.rolled_back)
            self.actions.append(rec)
        self.n_actions = len(guard.actions)

    def live(self, step: int, snap: Any) -> None:
        self.prog.step(
            step,
            self.ui["live"].format(
                s=step,
                n=self.steps,
                loss=_num(float(snap.evidence.get("loss", math.nan))),
                theta=snap.theta,
                f=snap.f_total,
                z=snap.zscore,
                status=_status(snap.status, self.lang),
            ),
        )

    def train(self) -> Tuple[int, float]:
        """All steps (until the Guard stops the run): (steps run, seconds).

        The demo prints each action with its reason itself (not with --quiet), so the
        Guard's own WARNING line per action is held back while it runs; errors still show."""
        self.header()
        log = logging.getLogger("anet_lite")
        level = log.level
        log.setLevel(logging.ERROR)
        t0 = time.perf_counter()
        step = 0
        try:
            for step in range(1, self.steps + 1):
                if not self.step(step):
                    break
        finally:
            log.setLevel(level)
            self.prog.close()
            self.guard.close()
            self.run_log.close()
        return step, time.perf_counter() - t0

    def result(self, steps_run: int, seconds: float) -> Dict[str, Any]:
        from .. import __version__

        torch, data, at, ce_hist = self.torch, self.data, self.at, self.ce_hist
        with torch.no_grad():
            held = float(torch.nn.functional.cross_entropy(self.model(data.eval_x), data.eval_y))
        pre = ce_hist[max(0, at - 21) : at - 1]
        uniform = math.log(data.vocab)
        blowup = None
        for i, v in enumerate(ce_hist[at - 1 :], start=at):
            if not math.isfinite(v) or v > uniform:
                blowup = {"step": i, "non_finite": not math.isfinite(v)}
                break
        tail = ce_hist[-20:]
        first = self.alerts[0] if self.alerts else None
        stopped = self.stopped
        rb = [a for a in self.actions if "checkpoint_step" in a]
        if stopped is not None and rb:
            stopped["checkpoint_step"] = rb[-1]["checkpoint_step"]
        return {
            "version": __version__,
            "fault": self.fault,
            "fault_step": at,
            "what": self.what,
            "steps": self.steps,
            "steps_run": steps_run,
            "seed": self.args.seed,
            "guard": "watching" if self.args.no_guard else "acting",
            "precision": PRECISION,
            "params": self.params,
            "vocab": data.vocab,
            "chars": data.chars,
            "files": data.files,
            "pre_fault_loss": sum(pre) / len(pre) if pre else math.nan,
            "first_alert": first,
            "first_alert_loss": ce_hist[first["step"] - 1] if first else None,
            "alert_steps": len(self.alerts),
            "incidents": len(self.report.incidents),
            "collapsed_at": self.report.collapse_step,
            "blowup": blowup,
            "uniform_loss": uniform,
            "actions": self.actions,
            "stopped": stopped,
            "final_loss_heldout": held,
            "final_loss_train": sum(tail) / len(tail) if tail else math.nan,
            "seconds": seconds,
            "report_data": self.report,
        }


def _train(args: argparse.Namespace, out: Path, torch: Any) -> Dict[str, Any]:
    run = _Run(args, out, torch)
    return run.result(*run.train())


# ---- the run folder and the summary ---------------------------------------------------------


def _twin(args: argparse.Namespace, out: Path) -> Optional[Dict[str, str]]:
    """The same run with the other --no-guard setting, when it was made (its folder is
    ``OUT-noguard`` beside a guarded run's ``OUT``, and the other way round, with the same
    fault, fault step, steps and seed in its meta.json): ``{"path", "guard"}`` for meta.json."""
    base, tail = out.name, ""
    if base.endswith("-ja"):
        base, tail = base[:-3], "-ja"
    if args.no_guard:
        if not base.endswith("-noguard"):
            return None
        name, guard = base[: -len("-noguard")] + tail, "acting"
    else:
        name, guard = base + "-noguard" + tail, "watching"
    other = out.parent / name
    try:
        meta = json.loads((other / "meta.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    same = ("fault", "fault_step", "steps", "seed")
    if not isinstance(meta, dict) or meta.get("guard") != guard:
        return None
    if any(meta.get(k) != getattr(args, k) for k in same):
        return None
    if not (other / "metrics.csv").is_file():
        return None
    return {"path": os.path.join("..", name), "guard": guard}


def _write_meta(args: argparse.Namespace, out: Path, r: Dict[str, Any], res: Any) -> None:
    from ..records.outputs import json_safe

    meta = {
        "run_name": out.name,
        "source": "anet-lite demo " + " ".join(_cmdline(args)),
        "format": "demo",
        "lang": args.lang,
        "model": f"char-MLP ctx={CONTEXT} emb={EMBED} hidden={HIDDEN}",
        "optimizer": f"SGD lr={LR} momentum={MOMENTUM} warmup={WARMUP} batch={BATCH}",
        **{k: v for k, v in r.items() if k != "seconds"},
        "tombstones": {"ok": res.ok, "records": res.records, "head": res.head},
        "anet_lite_version": r["version"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(r["seconds"], 3),
    }
    twin = _twin(args, out)
    if twin is not None:
        meta["twin"] = twin
    meta.pop("version", None)
    (out / "meta.json").write_text(
        json.dumps(json_safe(meta), indent=2, ensure_ascii=False) + "\n", "utf-8"
    )


def _finish(args: argparse.Namespace, out: Path, r: Dict[str, Any]) -> None:
    """Write meta.json and report.html, then print the summary."""
    from ..records.tombstone import verify
    from ..report.html import write_report

    tomb_path = out / "tombstones.jsonl"
    if not tomb_path.exists():
        tomb_path.touch()  # an empty chain (no action taken) is a valid one
    res = verify(tomb_path)
    report = r.pop("report_data")
    _write_meta(args, out, r, res)
    report_path = write_report(out, data=report)
    lines = _summary(args, r, res)
    lines.append(f"{_UI[args.lang]['files']}:")
    for p in ("metrics.csv", "metrics.jsonl", "tombstones.jsonl", "meta.json"):
        lines.append(f"  {out / p}")
    lines.append(f"  {report_path}")
    lines.append(_hint(args))
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _hint(args: argparse.Namespace) -> str:
    ui = _UI[args.lang]
    if args.fault == "none":
        return ui["hint_none"]
    return ui["hint_noguard"] if args.no_guard else ui["hint_guard"]


def _first_alert_line(r: Dict[str, Any], lang: str) -> str:
    ui, first = _UI[lang], r["first_alert"]
    if first is None:
        return ui["s_no_alert"]
    k = first["step"] - r["fault_step"]
    if k == 0:
        rel = ui["s_rel_at"]
    else:
        rel = ui["s_rel_after"].format(k=k) if k > 0 else ui["s_rel_before"].format(k=-k)
    return ui["s_first"].format(s=first["step"], cause=_cause(first["cause"], lang), rel=rel)


def _collapse_line(r: Dict[str, Any], lang: str) -> str:
    """The collapse step (the first step whose loss or gradient is not finite: the one the
    report and meta.json's ``collapsed_at`` give too), and when the model loss passed a
    uniform guess."""
    ui, bu, c = _UI[lang], r["blowup"], r["collapsed_at"]
    vu = {"v": r["vocab"], "u": r["uniform_loss"]}
    if c is None:
        if bu is None:
            return ui["s_no_collapse"].format(chance=ui["s_below_chance"].format(**vu))
        return ui["s_no_collapse"].format(chance=ui["s_chance_only"].format(b=bu["step"], **vu))
    chance = ""
    if bu is not None and bu["step"] < c:
        chance = ui["s_chance_at"].format(b=bu["step"], **vu)
    return ui["s_collapse"].format(s=c, chance=chance, pre=_num(r["pre_fault_loss"]))


def _summary(args: argparse.Namespace, r: Dict[str, Any], res: Any) -> List[str]:
    lang, ui = args.lang, _UI[args.lang]
    at = ui["at_step"].format(s=r["fault_step"])
    fault_at = ui["fault_none"] if r["fault"] == "none" else f"{r['fault']} @ {at}"
    lines = ["", f"{ui['summary']}:", "  " + ui["s_fault"].format(what=fault_at)]
    lines.append("  " + _first_alert_line(r, lang))
    lines.append("  " + _collapse_line(r, lang))
    acts = r["actions"]
    if acts:
        listed = ", ".join(
            f"{a['kind']}@{a['step']}"
            + (f" x{a['factor']:.3g}" if a["kind"] == "slow_down" else "")
            for a in acts[:8]
        ) + (" ..." if len(acts) > 8 else "")
        lines.append("  " + ui["s_actions"].format(n=len(acts), list=listed))
    else:
        lines.append("  " + (ui["s_watch_only"] if args.no_guard else ui["s_no_actions"]))
    st = r["stopped"]
    if st is not None:
        lines.append("  " + ui["s_stopped"].format(s=st["step"], c=st.get("checkpoint_step", "?")))
    held, train = _num(r["final_loss_heldout"]), _num(r["final_loss_train"])
    lines.append("  " + ui["s_final"].format(held=held, train=train))
    ok = ui["s_tomb_ok"] if res.ok else ui["s_tomb_bad"].format(why=res.reason)
    pl = ("" if res.records == 1 else "s") if lang == "en" else ""
    lines.append("  " + ui["s_tomb"].format(n=res.records, pl=pl, ok=ok))
    lines.append("  " + ui["s_time"].format(sec=r["seconds"], n=r["steps_run"]))
    return lines


def _cmdline(args: argparse.Namespace) -> List[str]:
    parts = ["--fault", args.fault, "--seed", str(args.seed), "--steps", str(args.steps)]
    parts += ["--fault-step", str(args.fault_step), "--lang", args.lang]
    if args.no_guard:
        parts.append("--no-guard")
    return parts


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
