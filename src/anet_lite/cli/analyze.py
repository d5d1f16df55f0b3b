"""``anet-lite analyze``: replay a log through a Monitor and write a run folder, streaming.

The loop keeps memory constant in the log's length: snapshots are
collected in chunks of ``CHUNK`` steps; each chunk is turned into columns once
(``outputs.snapshot_columns``), written to metrics.csv with one formatting call
(``outputs.csv_chunk``), its notable steps to events.jsonl, and handed to the report's
``RunData.add_many`` (a bounded min/max-decimated series). Files are flushed after every
chunk and at the end or on an error, so an interrupted replay keeps every finished chunk.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, TextIO

from ..readers.registry import FORMATS
from ..report.runfolder import CHUNK, RunFolderWriter
from ._common import EXIT_ALERT, EXIT_OK, EXIT_USAGE
from ._common import err as _err

_MAX_PRINTED_INCIDENTS = 20
_BAR_MIN_BYTES = 2_000_000  # show a progress bar for inputs larger than this (on a TTY)
# The replay allocates millions of short-lived, acyclic objects (snapshots, their dicts):
# reference counting frees them, and the cyclic collector only rescans the survivors of
# each chunk, again and again (~10 % of the time). It is paused during the loop; should
# objects pile up anyway (more than _GC_SLACK net allocations: cycles), it runs at once.
_GC_SLACK = 500_000
_WRITES = ("metrics.csv", "metrics.jsonl", "events.jsonl", "meta.json", "report.html")

__all__ = [
    "ANALYZE_FILES",
    "add_analyze_parser",
    "cmd_analyze",
    "default_out",
    "run_meta",
]


ANALYZE_FILES = """Writes DIR (default: <input stem>.anet/ next to the input):
  metrics.csv    every step, RunLog's columns (Monitor statistics to 6 significant digits)
  events.jsonl   the full snapshot (all evidence) of every notable step: alerts, statuses
                 other than healthy/warming_up, schedule events, one-step spikes
  metrics.jsonl  every step's full snapshot, only with --jsonl (it repeats metrics.csv)
  meta.json, report.html"""


def add_analyze_parser(sub: Any, fmt: Any, codes: str, func: Any) -> None:
    epilog = f"""examples:
  anet-lite analyze train.csv
  anet-lite analyze metrics.jsonl --map loss=train/loss --map grad_norm=optim/gnorm
  anet-lite analyze runs/exp1 --format tensorboard --out exp1.anet --lang ja
  anet-lite analyze wandb_export.csv --json > summary.json

Inputs: CSV/TSV or JSONL with a step column and any of loss, grad_norm, step_norm
(update_norm), noise, lr, time (seconds; *_ms columns are converted), param_norm (the
weights' norm: with step_norm, an update of >= 10% of it alerts), processivity (cos(-g,
update) of the step, in [-1, 1]: tells an update pushed uphill from noisy gradients);
TensorBoard event files or run folders; W&B CSV exports; MLflow CSV exports and run
folders. Common names (train/loss, learning_rate, gradient_norm, _runtime, weight_norm,
update_cos, ...) are recognised.

{ANALYZE_FILES}

{codes}
"""
    a = sub.add_parser(
        "analyze",
        help="replay a training log through the Monitor; print alerts; write a run folder",
        description="Replay a training log through a fresh Monitor, print the first alert of "
        "each incident with its explanation, and write a run folder with a report.",
        epilog=epilog,
        formatter_class=fmt,
    )
    a.add_argument("path", metavar="PATH", help="log file or run folder")
    a.add_argument("--out", metavar="DIR", help="run folder to write (default: <stem>.anet/)")
    a.add_argument(
        "--map",
        metavar="FIELD=COLUMN",
        action="append",
        default=[],
        help="read FIELD (step, loss, grad_norm, step_norm, noise, lr, time, param_norm, "
        "processivity) from COLUMN; repeatable",
    )
    a.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="input format (default: auto, from the name and first line)",
    )
    a.add_argument(
        "--allow-special",
        action="store_true",
        help="also read a FIFO or device as PATH (with --format); by default only regular "
        "files and folders are read, since a pipe can block forever",
    )
    a.add_argument("--lang", default="en", choices=("en", "ja"), help="explanation language")
    a.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    a.add_argument(
        "--jsonl",
        action="store_true",
        help="also write metrics.jsonl: every step's full snapshot (RunLog's JSONL; slower, "
        "and metrics.csv + events.jsonl already hold every step and every notable one)",
    )
    a.add_argument("--no-report", action="store_true", help="do not write report.html")
    a.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    a.set_defaults(func=func)


class _Bar:
    """tqdm on stderr when it is a TTY and the input is large; otherwise nothing."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(
                desc=desc, unit=" steps", unit_scale=True, file=sys.stderr, mininterval=0.5
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _input_size(p: Path) -> int:
    try:
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    except OSError:
        return 0


def default_out(p: Path) -> Path:
    stem = p.name if p.is_dir() else p.stem
    return p.resolve().parent / f"{stem}.anet"


def _out_conflict(src: Path, out: Path) -> str:
    """Why writing the run folder ``out`` would touch the input ``src`` ("" if it cannot):
    ``out`` inside an input folder, or one of its files being the input (same inode: a
    hard link or symlink counts). Checked before anything is removed or written."""
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a folder"
    try:
        src_r, out_r = src.resolve(), out.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return f"--out {out}: {e}"
    if src.is_dir():
        if out_r == src_r or src_r in out_r.parents:
            return f"--out {out}: inside the input folder {src}; choose another folder"
        return ""
    for name in _WRITES:
        p = out / name
        try:
            same = p.exists() and os.path.samefile(p, src)
        except OSError:
            same = False
        if same or (out_r / name) == src_r:
            return f"--out {out}: {name} there is the input file {src}; choose another folder"
    return ""


def _fresh_out(out: Path) -> None:
    """Create ``out`` and remove this run's previous outputs there (a fresh replay, not an
    append): files and symlinks are unlinked (a link's target is never touched)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in _WRITES:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()


def cmd_analyze(args: argparse.Namespace) -> int:
    """``anet-lite analyze``: open the inputs, replay the log through a Monitor into the
    run folder, then write meta.json and the summary. Exit 0, or 2 with one error line."""
    opened = _open_inputs(args)
    if isinstance(opened, int):
        return opened
    src, out, log, mapping = opened
    from ..report.html import RunData

    data = RunData(lang=args.lang)
    writer = RunFolderWriter(out, data, jsonl=bool(getattr(args, "jsonl", False)), chunk=CHUNK)
    t0 = time.perf_counter()
    failed = _replay(args, src, out, log, writer)
    if failed is not None:
        return failed
    elapsed = time.perf_counter() - t0
    try:
        return _finish(args, src, out, log, data, mapping, writer, elapsed)
    except OSError as e:
        _err(f"{e.filename or out}: {e.strerror or e}")
        return EXIT_USAGE


def _open_inputs(args: argparse.Namespace) -> Any:
    """(source, run folder, log reader, column mapping), or the exit code of a usage error
    (already reported)."""
    from ..readers import LogFormatError, MissingDependencyError, open_log, parse_mapping

    src = Path(args.path)
    try:
        mapping = parse_mapping(args.map)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    try:
        log = open_log(src, args.format, mapping, bool(getattr(args, "allow_special", False)))
    except (LogFormatError, MissingDependencyError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{src}: {e.strerror or e}")
        return EXIT_USAGE
    out = Path(args.out) if args.out else default_out(src)
    why = _out_conflict(src, out)
    if why:
        _err(why)
        return EXIT_USAGE
    try:
        _fresh_out(out)
    except OSError as e:
        _err(f"--out {out}: {e.strerror or e}")
        return EXIT_USAGE
    return src, out, log, mapping


def _replay(
    args: argparse.Namespace, src: Path, out: Path, log: Any, writer: RunFolderWriter
) -> Optional[int]:
    """Every record of ``log`` through one Monitor, written in chunks; None, or the exit
    code of an error (already reported; what was written so far stays)."""
    from ..monitor import Monitor
    from ..readers import LogFormatError, MissingDependencyError

    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = _Bar(tty and not args.quiet and _input_size(src) > _BAR_MIN_BYTES, src.name)
    update, buf, chunk = Monitor().update, writer.buf, writer.chunk
    gc_on = gc.isenabled()
    gc.disable()  # see _GC_SLACK
    try:
        try:
            for step, loss, g, sn, noise, lr, t, pn, proc in log:
                buf.append(
                    update(loss, step=step, grad_norm=g, step_norm=sn, noise=noise, lr=lr,
                           time=t, param_norm=pn, processivity=proc)
                )
                if len(buf) >= chunk:
                    writer.flush()
                    buf = writer.buf
                    bar.update(chunk)
                    if gc.get_count()[0] > _GC_SLACK:
                        gc.collect()
        finally:
            if gc_on:
                gc.enable()
            bar.update(len(writer.buf))
            bar.close()
            writer.close()
    except (LogFormatError, MissingDependencyError) as e:
        _err(str(e))
        return EXIT_USAGE
    except TypeError as e:  # Monitor's first-call type check
        _err(f"{src}: {e}")
        return EXIT_USAGE
    except OSError as e:  # a full disk, a read error: what was written so far stays
        _err(f"{e.filename or out}: {e.strerror or e}")
        return EXIT_USAGE
    return None


def _tombstone_head(out: Path) -> Any:
    """The run folder's tombstone chain as verified now (None without a tombstones.jsonl):
    recorded in meta.json, so that ``report`` notices a tail cut off later."""
    from ..records.tombstone import verify

    p = out / "tombstones.jsonl"
    if not p.is_file():
        return None
    try:
        res = verify(p)
    except (TypeError, ValueError) as e:  # e.g. keyed records without a key
        return {"ok": False, "reason": str(e)}
    return {"ok": res.ok, "records": res.records, "head": res.head, "chain": res.chain}


def run_meta(src: Path, fmt: str, columns: Dict[str, str], lang: str, data: Any) -> Dict[str, Any]:
    """What every run folder's meta.json says (``analyze`` and ``watch`` add their own)."""
    from .. import __version__

    return {
        "run_name": src.name if src.is_dir() else src.stem,
        "source": str(src.resolve()),
        "format": fmt,
        "columns": columns,
        "lang": lang,
        "steps": data.steps,
        "judged_steps": data.judged_steps,
        "alerts": data.alerts,
        "incidents": len(data.incidents),
        "anet_lite_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finish(
    args: argparse.Namespace,
    src: Path,
    out: Path,
    log: Any,
    data: Any,
    mapping: Dict[str, str],
    writer: RunFolderWriter,
    elapsed: float,
) -> int:
    """meta.json, report.html and what is printed, after the replay."""
    from ..records.outputs import write_atomic

    meta = run_meta(src, log.format, log.columns, args.lang, data)
    meta.update(
        mapping=mapping,
        gaps=log.stats.as_dict(),
        gaps_summary=log.stats.summary(),
        seconds=round(elapsed, 3),
        tombstones=_tombstone_head(out),
    )
    write_atomic(out / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    paths = {
        "run_dir": str(out),
        "metrics_csv": str(out / "metrics.csv"),
        "events_jsonl": str(out / "events.jsonl"),
    }
    if writer.jsonl_path is not None:
        paths["metrics_jsonl"] = str(writer.jsonl_path)
    paths["meta"] = str(out / "meta.json")
    report_note = ""
    if not args.no_report:
        from ..report.html import plots_available, write_report

        paths["report"] = str(write_report(out, data=data))
        if not plots_available():
            report_note = "report.html has no plots: pip install 'anet-lite[report]'"
    code = EXIT_ALERT if data.alerts else EXIT_OK
    if args.json:
        from ..records.outputs import json_safe

        summary = {"source": str(src), "format": log.format, "exit_code": code}
        summary.update(data.summary())
        summary["gaps"] = log.stats.as_dict()
        summary["paths"] = paths
        summary["seconds"] = round(elapsed, 3)
        json.dump(json_safe(summary), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        _print_analysis(sys.stdout, src, log, data, paths, elapsed)
    if report_note and not args.quiet:
        sys.stderr.write(f"anet-lite: note: {report_note}\n")
    return code


def _print_analysis(
    f: TextIO, src: Path, log: Any, data: Any, paths: Dict[str, str], elapsed: float
) -> None:
    from ..report.data import END_ROWS
    from ..report.words import count

    cols = ", ".join(f"{k}={v}" for k, v in log.columns.items())
    # a sparse log's lines stand for the steps between them (docs/monitor.md): say so
    sparse = data.sparse
    unit = "line" if sparse else "step"
    span = f" over steps {data.first_step:,}-{data.last_step:,}" if sparse else ""
    size = count(data.steps, unit) + span
    f.write(f"{src}: {size} ({log.format}; {cols}) in {elapsed:.1f} s\n")
    f.write(f"{log.stats.summary()}\n")
    if not data.incidents and data.judged_steps == 0:
        f.write(
            f"not enough steps to judge: all {count(data.steps, unit)} were warm-up "
            "(the Monitor learns the run's levels first); no alert\n"
        )
    elif not data.incidents:
        judged = (
            f"no alert in {count(data.steps, unit)} "
            f"({data.judged_steps:,} judged after warm-up)"
        )
        r = data.ends_where_it_started()
        if r is not None and data.starts_untrained:
            f.write(
                f"{judged}, but the loss ends where it started: its last {END_ROWS} values "
                f"average {r:.2f}x the first (the run kept nothing it learned, unless this "
                "log starts from a trained model)\n"
            )
        elif r is not None:
            f.write(
                f"{judged}, but the loss ends where this log starts (step {data.first_step:,}):"
                f" its last {END_ROWS} values average {r:.2f}x the first (no progress over the"
                " logged steps)\n"
            )
        else:
            f.write(f"healthy: {judged}\n")
    else:
        n = len(data.incidents)
        f.write(
            f"ALERT: {count(data.alerts, 'alert_step')} in {count(n, 'incident')}"
            f" (alerts within 50 steps form one incident)\n"
        )
        for inc in data.incidents[:_MAX_PRINTED_INCIDENTS]:
            span = (
                f"step {inc['first_step']}"
                if inc["first_step"] == inc["last_step"]
                else f"steps {inc['first_step']}-{inc['last_step']}"
            )
            f.write(
                f"\n  [{inc['status']}] {span}: {inc['cause']} "
                f"({count(inc['alerts'], 'alert_step')})\n    {inc['explanation']}\n"
            )
        if n > _MAX_PRINTED_INCIDENTS:
            f.write(f"\n  ... and {n - _MAX_PRINTED_INCIDENTS:,} more incidents (see the report)\n")
        f.write("\n")
    for k in ("run_dir", "metrics_csv", "events_jsonl", "metrics_jsonl", "meta", "report"):
        if k in paths:
            f.write(f"{k.replace('_', ' ')}: {paths[k]}\n")
