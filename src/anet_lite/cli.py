"""``anet-lite``: replay a training log through the Monitor, write reports, verify tombstones.

    anet-lite analyze train.csv            # exit 0 healthy, 1 alerts found, 2 bad input
    anet-lite report run.anet/             # (re)write run.anet/report.html
    anet-lite verify run.anet/tombstones.jsonl

``main(argv)`` returns the exit code (it never calls ``sys.exit``), so it can be tested
in-process; ``python -m anet_lite`` and the ``anet-lite`` script call it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple

EXIT_OK, EXIT_ALERT, EXIT_USAGE = 0, 1, 2
_MAX_PRINTED_INCIDENTS = 20
_BAR_MIN_BYTES = 2_000_000  # show a progress bar for inputs larger than this (on a TTY)

_CODES = """exit codes:
  0  healthy: no alert
  1  alerts found
  2  usage or input error (bad file, unknown format, missing column)"""

_MAIN_EPILOG = f"""examples:
  anet-lite analyze train.csv
  anet-lite analyze runs/exp1 --format tensorboard --out exp1.anet
  anet-lite report exp1.anet
  anet-lite verify exp1.anet/tombstones.jsonl

{_CODES}
"""

_ANALYZE_EPILOG = f"""examples:
  anet-lite analyze train.csv
  anet-lite analyze metrics.jsonl --map loss=train/loss --map grad_norm=optim/gnorm
  anet-lite analyze runs/exp1 --format tensorboard --out exp1.anet --lang ja
  anet-lite analyze wandb_export.csv --json > summary.json

Inputs: CSV/TSV or JSONL with a step column and any of loss, grad_norm, step_norm
(update_norm), noise, lr, time (seconds; *_ms columns are converted); TensorBoard event
files or run folders; W&B CSV exports; MLflow CSV exports and run folders. Common names
(train/loss, learning_rate, gradient_norm, _runtime, ...) are recognised.

Writes DIR (default: <input stem>.anet/ next to the input) with metrics.csv,
metrics.jsonl, meta.json and report.html.

{_CODES}
"""

_REPORT_EPILOG = """examples:
  anet-lite report train.anet
  anet-lite report train.anet --out /tmp/train-report.html

exit codes:
  0  report written
  2  not a run folder (no metrics.jsonl / metrics.csv) or unreadable
"""

_VERIFY_EPILOG = """examples:
  anet-lite verify run.anet/tombstones.jsonl
  anet-lite verify tombstones.jsonl --head sha256:3f2a...   # also detects a cut-off tail
  ANET_KEY=secret anet-lite verify tombstones.jsonl --key-env ANET_KEY

Without --key-env, an HMAC key is read from ANET_TOMBSTONE_KEY when set.

exit codes:
  0  the chain is intact
  1  the chain is broken (the first bad line and what is wrong are printed)
  2  usage error (no such file, key variable not set)
"""

_DEMO_EPILOG = """examples:
  anet-lite demo
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise instead of exiting (main() returns codes)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise _ExitError(EXIT_USAGE)

    def exit(self, status: int = 0, message: Optional[str] = None) -> Any:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _ExitError(status)


class _ExitError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="anet-lite",
        description="Detect, explain and record the moment a training run starts to fail.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"anet-lite {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser(
        "analyze",
        help="replay a training log through the Monitor; print alerts; write a run folder",
        description="Replay a training log through a fresh Monitor, print the first alert of "
        "each incident with its explanation, and write a run folder with a report.",
        epilog=_ANALYZE_EPILOG,
        formatter_class=fmt,
    )
    a.add_argument("path", metavar="PATH", help="log file or run folder")
    a.add_argument("--out", metavar="DIR", help="run folder to write (default: <stem>.anet/)")
    a.add_argument(
        "--map",
        metavar="FIELD=COLUMN",
        action="append",
        default=[],
        help="read FIELD (step, loss, grad_norm, step_norm, noise, lr, time) from COLUMN; "
        "repeatable",
    )
    a.add_argument(
        "--format",
        default="auto",
        choices=("auto", "csv", "jsonl", "tensorboard", "wandb", "mlflow"),
        help="input format (default: auto, from the name and first line)",
    )
    a.add_argument("--lang", default="en", choices=("en", "ja"), help="explanation language")
    a.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    a.add_argument("--no-report", action="store_true", help="do not write report.html")
    a.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    a.set_defaults(func=cmd_analyze)

    r = sub.add_parser(
        "report",
        help="(re)write report.html for a run folder",
        description="Write one self-contained HTML report (no network) for a run folder "
        "holding metrics.jsonl / metrics.csv (RunLog), and optionally meta.json and "
        "tombstones.jsonl.",
        epilog=_REPORT_EPILOG,
        formatter_class=fmt,
    )
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", metavar="FILE", help="where to write (default: RUN_DIR/report.html)")
    r.set_defaults(func=cmd_report)

    v = sub.add_parser(
        "verify",
        help="check a tombstone log's hash chain",
        description="Verify a tombstone log (hash chain, optional HMAC key and head hash).",
        epilog=_VERIFY_EPILOG,
        formatter_class=fmt,
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument("--head", metavar="HASH", help="the last hash, kept elsewhere")
    v.add_argument(
        "--key-env", metavar="VAR", help="read the HMAC key from environment variable VAR"
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_verify)

    d = sub.add_parser(
        "demo",
        help="run the built-in demo",
        description="Run the built-in demo.",
        epilog=_DEMO_EPILOG,
        formatter_class=fmt,
    )
    d.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_demo)
    _add_tombstones_parser(sub, fmt)
    _add_sig_check_parser(sub, fmt)
    _add_merge_scan_parser(sub, fmt)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "demo":  # everything after "demo" is the demo's, --flags included
        return _demo(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ExitError as e:
        return e.code
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except _ExitError as e:
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("anet-lite: interrupted\n")
        return 130


def _err(msg: str) -> None:
    sys.stderr.write(f"anet-lite: error: {msg}\n")


# ---- analyze ------------------------------------------------------------------------------


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


def _default_out(p: Path) -> Path:
    stem = p.name if p.is_dir() else p.stem
    return p.resolve().parent / f"{stem}.anet"


def cmd_analyze(args: argparse.Namespace) -> int:
    from . import __version__
    from .monitor import Monitor
    from .readers import LogFormatError, MissingDependencyError, open_log, parse_mapping
    from .report.html import RunData

    src = Path(args.path)
    try:
        mapping = parse_mapping(args.map)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    try:
        log = open_log(src, args.format, mapping)
    except (LogFormatError, MissingDependencyError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{src}: {e.strerror or e}")
        return EXIT_USAGE

    out = Path(args.out) if args.out else _default_out(src)
    if out.exists() and not out.is_dir():
        _err(f"--out {out}: exists and is not a folder")
        return EXIT_USAGE
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.csv", "metrics.jsonl", "meta.json", "report.html"):
            if (out / name).is_file():
                (out / name).unlink()  # a fresh replay, not an append to an old one
    except OSError as e:
        _err(f"--out {out}: {e.strerror or e}")
        return EXIT_USAGE

    data = RunData(lang=args.lang)
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = _Bar(tty and not args.quiet and _input_size(src) > _BAR_MIN_BYTES, src.name)
    t0 = time.perf_counter()
    monitor = Monitor()
    run_log = _FastRunLog(out / "metrics.csv", out / "metrics.jsonl")
    update, add = monitor.update, data.add
    n = 0
    try:
        for rec in log:
            snap = update(
                rec.loss,
                step=rec.step,
                grad_norm=rec.grad_norm,
                step_norm=rec.step_norm,
                noise=rec.noise,
                lr=rec.lr,
                time=rec.time,
            )
            run_log.write(snap)
            add(snap)
            n += 1
            if not n & 4095:
                bar.update(4096)
    except (LogFormatError, MissingDependencyError) as e:
        bar.close()
        run_log.close()
        _err(str(e))
        return EXIT_USAGE
    except TypeError as e:  # Monitor's first-call type check
        bar.close()
        run_log.close()
        _err(f"{src}: {e}")
        return EXIT_USAGE
    finally:
        run_log.close()
    bar.update(n & 4095)
    bar.close()
    elapsed = time.perf_counter() - t0

    meta: Dict[str, Any] = {
        "run_name": src.name if src.is_dir() else src.stem,
        "source": str(src.resolve()),
        "format": log.format,
        "columns": log.columns,
        "mapping": mapping,
        "gaps": log.stats.as_dict(),
        "gaps_summary": log.stats.summary(),
        "lang": args.lang,
        "steps": data.steps,
        "alerts": data.alerts,
        "incidents": len(data.incidents),
        "anet_lite_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(elapsed, 3),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
    paths = {
        "run_dir": str(out),
        "metrics_csv": str(out / "metrics.csv"),
        "metrics_jsonl": str(out / "metrics.jsonl"),
        "meta": str(out / "meta.json"),
    }
    report_note = ""
    if not args.no_report:
        from .report.html import plots_available, write_report

        paths["report"] = str(write_report(out, data=data))
        if not plots_available():
            report_note = "report.html has no plots: pip install 'anet-lite[report]'"
    code = EXIT_ALERT if data.alerts else EXIT_OK
    if args.json:
        summary = {"source": str(src), "format": log.format, "exit_code": code}
        summary.update(data.summary())
        summary["gaps"] = log.stats.as_dict()
        summary["paths"] = paths
        summary["seconds"] = round(elapsed, 3)
        json.dump(_json_safe(summary), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        _print_analysis(sys.stdout, src, log, data, paths, elapsed)
    if report_note and not args.quiet:
        sys.stderr.write(f"anet-lite: note: {report_note}\n")
    return code


def _json_safe(v: Any) -> Any:
    from .outputs import json_safe

    return json_safe(v)


def _print_analysis(
    f: TextIO, src: Path, log: Any, data: Any, paths: Dict[str, str], elapsed: float
) -> None:
    cols = ", ".join(f"{k}={v}" for k, v in log.columns.items())
    f.write(f"{src}: {data.steps:,} steps ({log.format}; {cols}) in {elapsed:.1f} s\n")
    f.write(f"{log.stats.summary()}\n")
    if not data.incidents:
        f.write(f"healthy: no alert in {data.steps:,} steps\n")
    else:
        n = len(data.incidents)
        f.write(
            f"ALERT: {data.alerts:,} alert steps in {n:,} incident{'s' if n != 1 else ''}"
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
                f"({inc['alerts']:,} alert steps)\n    {inc['explanation']}\n"
            )
        if n > _MAX_PRINTED_INCIDENTS:
            f.write(f"\n  ... and {n - _MAX_PRINTED_INCIDENTS:,} more incidents (see the report)\n")
        f.write("\n")
    for k in ("run_dir", "metrics_csv", "metrics_jsonl", "meta", "report"):
        if k in paths:
            f.write(f"{k.replace('_', ' ')}: {paths[k]}\n")


class _FastRunLog:
    """Writes exactly ``RunLog``'s CSV and JSONL lines, buffered and with a faster JSON path.

    ``RunLog`` flushes every line so that a killed training run keeps its log; replaying a
    finished log does not need that, and at a million steps the flushes and the pure-Python
    ``json_safe`` pass cost more than the Monitor. Lines are built from ``outputs.COLUMNS``,
    ``outputs._cell`` and ``json.dumps`` with the same options; only snapshots holding a
    non-finite number go through ``json_safe`` (the C encoder refuses them first). A test
    checks that the files are byte-identical to ``RunLog``'s.
    """

    def __init__(self, csv_path: Path, jsonl_path: Path) -> None:
        from . import outputs

        RunLog = outputs.RunLog
        RunLog(csv_path, jsonl_path).close()  # creates the files (and the CSV header)
        self._cols = tuple(outputs.COLUMNS)
        self._from_snap = frozenset(outputs._FROM_SNAP)
        self._cell = outputs._cell
        self._json_safe = outputs.json_safe
        self._encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
        self._csv = open(csv_path, "a", encoding="utf-8", newline="", buffering=1 << 20)  # noqa: SIM115
        self._jsonl = open(jsonl_path, "a", encoding="utf-8", newline="", buffering=1 << 20)  # noqa: SIM115

    def write(self, snap: Any) -> None:
        ev = snap.evidence
        cell, fs = self._cell, self._from_snap
        self._csv.write(
            ",".join([cell(getattr(snap, c) if c in fs else ev.get(c)) for c in self._cols]) + "\n"
        )
        d = snap.to_dict()
        try:
            line = self._encode(d)
        except ValueError:  # a non-finite float: RunLog writes it as "nan"/"inf"/"-inf"
            line = self._encode(self._json_safe(d))
        self._jsonl.write(line + "\n")

    def close(self) -> None:
        for f in (self._csv, self._jsonl):
            if not f.closed:
                f.close()


# ---- report -------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from .report.html import plots_available, write_report

    rd = Path(args.run_dir)
    if not rd.is_dir():
        _err(f"{rd}: not a folder")
        return EXIT_USAGE
    try:
        path = write_report(rd, args.out)
    except (ValueError, OSError) as e:
        _err(str(e))
        return EXIT_USAGE
    print(path)
    if not plots_available():
        sys.stderr.write("anet-lite: note: no plots: pip install 'anet-lite[report]'\n")
    return EXIT_OK


# ---- verify -------------------------------------------------------------------------------


def _tombstone_file_and_key(args: argparse.Namespace) -> Optional[Tuple[Path, Optional[str]]]:
    """FILE and the HMAC key from ``--key-env`` (None after printing a usage error)."""
    p = Path(args.file)
    if not p.is_file():
        _err(f"{p}: no such file")
        return None
    key = None
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            _err(f"--key-env {args.key_env}: the environment variable is not set or empty")
            return None
    return p, key


def cmd_verify(args: argparse.Namespace) -> int:
    from .tombstone import verify

    got = _tombstone_file_and_key(args)
    if got is None:
        return EXIT_USAGE
    p, key = got
    try:
        res = verify(p, head=args.head, key=key)
    except (TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    code = EXIT_OK if res.ok else EXIT_ALERT
    if args.json:
        d = {
            "ok": res.ok,
            "file": str(p),
            "records": res.records,
            "head": res.head,
            "line": res.line,
            "reason": res.reason,
        }
        print(json.dumps(d, ensure_ascii=False))
    elif res.ok:
        print(f"ok: {res.records} records, head {res.head}")
    else:
        where = f"line {res.line}: " if res.line is not None and "line" not in res.reason else ""
        print(f"BROKEN: {p}: {where}{res.reason}")
        print(f"  {res.records} records verify before it; last good hash {res.head}")
    return code


# ---- tombstones ---------------------------------------------------------------------------

_TOMBSTONES_EPILOG = """examples:
  anet-lite tombstones run.anet/tombstones.jsonl
  anet-lite tombstones tombstones.jsonl --event forget --policy compliance --lang ja
  anet-lite tombstones tombstones.jsonl --json > tombstones.json

Prints one row per record (time, event, policy, scope, key evidence, short hash), then
the hash chain's status (as `anet-lite verify`). --event/--policy filter the rows only;
the chain is always checked whole. An HMAC key is read from ANET_TOMBSTONE_KEY when set.

exit codes:
  0  the chain is intact
  1  the chain is broken
  2  usage error (no such file, key variable not set)
"""


def _add_tombstones_parser(sub: Any, fmt: Any) -> None:
    t = sub.add_parser(
        "tombstones",
        help="show a tombstone log as a table (and check its chain)",
        description="Show the records of a tombstone log as a readable table, with the "
        "hash chain's status at the end.",
        epilog=_TOMBSTONES_EPILOG,
        formatter_class=fmt,
    )
    t.add_argument("file", metavar="FILE")
    t.add_argument("--event", metavar="E", help="only records with this event (e.g. forget)")
    t.add_argument("--policy", metavar="P", help="only records with this policy (e.g. ttl)")
    t.add_argument("--lang", default="en", choices=("en", "ja"), help="header language")
    t.add_argument(
        "--key-env", metavar="VAR", help="read the HMAC key from environment variable VAR"
    )
    t.add_argument("--json", action="store_true", help="print records and chain status as JSON")
    t.set_defaults(func=cmd_tombstones)


def _read_tombstone_lines(p: Path) -> List[Dict[str, Any]]:
    """Every parseable record of ``p``; unreadable lines become placeholder rows."""
    out: List[Dict[str, Any]] = []
    with open(p, "rb") as f:
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                rec = {"event": f"(line {no}: unreadable)", "_line": no}
            out.append(rec)
    return out


def cmd_tombstones(args: argparse.Namespace) -> int:
    from .forgetting import format_table
    from .tombstone import verify

    got = _tombstone_file_and_key(args)
    if got is None:
        return EXIT_USAGE
    p, key = got
    try:
        res = verify(p, key=key)
        recs = _read_tombstone_lines(p)
    except (TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{p}: {e.strerror or e}")
        return EXIT_USAGE
    shown = [
        r
        for r in recs
        if (args.event is None or r.get("event") == args.event)
        and (args.policy is None or r.get("policy") == args.policy)
    ]
    code = EXIT_OK if res.ok else EXIT_ALERT
    chain = {
        "ok": res.ok,
        "records": res.records,
        "head": res.head,
        "line": res.line,
        "reason": res.reason,
    }
    if args.json:
        d = {"file": str(p), "total": len(recs), "shown": len(shown), "records": shown}
        d["chain"] = chain
        print(json.dumps(d, ensure_ascii=False))
        return code
    ja = args.lang == "ja"
    if shown:
        print(format_table(shown, lang=args.lang))
    elif recs:
        total = len(recs)
        print(f"(該当なし: 全 {total} 件)" if ja else f"(no matching records; {total} in all)")
    else:
        print("(記録なし)" if ja else "(no records)")
    if ja:
        n = f"{len(shown)} / {len(recs)} 件を表示"
        status = f"チェーン: 正常 ({res.records} 件)" if res.ok else f"チェーン: 破損: {res.reason}"
    else:
        n = f"{len(shown)} of {len(recs)} records shown"
        status = f"chain: ok ({res.records} records)" if res.ok else f"chain: BROKEN: {res.reason}"
    print(f"{n}\n{status}")
    if not res.ok:
        if ja:
            print(f"  {res.records} 件は正常、最後の正しいハッシュ {res.head}")
        else:
            print(f"  {res.records} records verify before it; last good hash {res.head}")
    return code


# ---- sig-check ----------------------------------------------------------------------------

_SIG_CHECK_EPILOG = """examples:
  anet-lite sig-check photo.png photo_x4.png
  anet-lite sig-check photo.png photo_x4.png --lang ja --json
  anet-lite sig-check --compare --factor 3

θ (0..1) compares the noise fingerprint of ORIGINAL with that of UPSCALED brought back to
ORIGINAL's size (area/BOX filter). >= 0.9 preserved, >= 0.6 weakened, below: lost.
--compare runs Pillow's nearest/bilinear/bicubic/lanczos on scikit-learn's sample photos.
Needs Pillow: pip install 'anet-lite[image]'.

exit codes:
  0  θ computed (whatever its value)
  2  usage or input error (no such file, not an image, sizes that do not fit, no Pillow)
"""


def _add_sig_check_parser(sub: Any, fmt: Any) -> None:
    s = sub.add_parser(
        "sig-check",
        help="does an upscaled image keep the original's noise signature? (θ)",
        description="Signature-preserving super-resolution check: θ between the noise "
        "fingerprints of an original image and its upscaled version.",
        epilog=_SIG_CHECK_EPILOG,
        formatter_class=fmt,
    )
    s.add_argument("original", metavar="ORIGINAL", nargs="?")
    s.add_argument("upscaled", metavar="UPSCALED", nargs="?")
    s.add_argument(
        "--compare", action="store_true", help="compare Pillow's upscalers on sample photos"
    )
    s.add_argument("--factor", type=float, default=2.0, help="--compare's scale (default 2)")
    s.add_argument("--beta", type=float, default=3.0, help="θ sensitivity (default 3)")
    s.add_argument("--lang", default="en", choices=("en", "ja"), help="verdict language")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_sig_check)


def cmd_sig_check(args: argparse.Namespace) -> int:
    try:
        from .fingerprint import signature_consistency
        from .image import compare_upscalers, format_comparison, load_image, verdict

        if args.compare:
            if args.original or args.upscaled:
                _err("sig-check: give ORIGINAL UPSCALED or --compare, not both")
                return EXIT_USAGE
            rows = compare_upscalers(factor=args.factor, beta=args.beta)
            if args.json:
                print(json.dumps(rows, ensure_ascii=False))
            else:
                print(format_comparison(rows, lang=args.lang))
            return EXIT_OK
        if not (args.original and args.upscaled):
            _err("sig-check needs ORIGINAL and UPSCALED (or --compare)")
            return EXIT_USAGE
        orig, up = load_image(args.original), load_image(args.upscaled)
        theta = signature_consistency(orig, up, beta=args.beta)
    except (ImportError, OSError, TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    words = verdict(theta, lang=args.lang)
    if args.json:
        d = {"original": args.original, "upscaled": args.upscaled, "theta": theta}
        d["verdict"] = words
        print(json.dumps(d, ensure_ascii=False))
    else:
        print(f"θ = {theta:.4f}: {words}")
    return EXIT_OK


# ---- merge-scan ---------------------------------------------------------------------------

_MERGE_SCAN_EPILOG = """examples:
  anet-lite merge-scan A.pt B.pt
  anet-lite merge-scan A.pt B.pt --alphas 21 --out merge_report --lang ja
  anet-lite merge-scan A.pt B.pt --arch mypkg.models:make_model --json
  anet-lite merge-scan --demo --out merge_demo

A.pt and B.pt are state_dicts (torch.save(model.state_dict(), path)), loaded with
torch.load(path, weights_only=True). The architecture is the built-in digits MLP
(Linear(64, 64) -> ReLU -> Linear(64, 10), keys hidden.* and out.*) unless --arch
MODULE:FACTORY names a function returning the (untrained) model. The data (--data digits,
the only one built in) is 400 held-out scikit-learn digits images in 50 batches of 8.
Merge: linear, (1 - a) * A + a * B. Safe: loss <= (1 + margin) * max(loss A, loss B)
and noise-fingerprint theta vs the nearer endpoint >= theta-min.
--demo scans the two built-in pairs (shared init: merges well; different inits: a loss
barrier) and writes DIR/merge_shared_init.html and DIR/merge_different_init.html
(DIR defaults to ./merge_scan_demo).

exit codes:
  0  safe at every alpha (--demo: the demo ran)
  1  a danger zone was found
  2  usage or input error (no such file, not a state_dict, keys that do not match)
"""


def _add_merge_scan_parser(sub: Any, fmt: Any) -> None:
    m = sub.add_parser(
        "merge-scan",
        help="scan the merges of two models for a danger zone (loss barrier, θ)",
        description="Model-merge danger boundaries: evaluate (1 - a) * A + a * B on a grid of "
        "a and report the safe interval and where merging stops being safe.",
        epilog=_MERGE_SCAN_EPILOG,
        formatter_class=fmt,
    )
    m.add_argument("a", metavar="A.pt", nargs="?")
    m.add_argument("b", metavar="B.pt", nargs="?")
    m.add_argument("--demo", action="store_true", help="scan the built-in digits pairs")
    m.add_argument("--data", default="digits", choices=("digits",), help="evaluation data")
    m.add_argument("--arch", metavar="MODULE:FACTORY", help="model factory (default: digits MLP)")
    m.add_argument("--alphas", type=int, default=11, help="grid points from 0 to 1 (default 11)")
    m.add_argument("--margin", type=float, default=0.1, help="relative loss margin (default 0.1)")
    m.add_argument("--theta-min", type=float, default=0.6, help="θ threshold (default 0.6)")
    m.add_argument("--out", metavar="DIR", help="write the HTML report(s) here")
    m.add_argument("--lang", default="en", choices=("en", "ja"), help="explanation language")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_merge_scan)


def _merge_factory(spec: Optional[str]) -> Any:
    from .torch.merge import digits_mlp

    if not spec:
        return digits_mlp
    import importlib

    mod, sep, fn = spec.partition(":")
    if not (mod and sep and fn):
        raise ValueError(f"--arch {spec!r}: expected MODULE:FACTORY")
    try:
        factory = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--arch {spec!r}: {e}") from None
    if not callable(factory):
        raise ValueError(f"--arch {spec!r}: not callable")
    return factory


def _load_state_dict(path: str) -> Any:
    import torch

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors)")
    return sd


def _merge_summary(name: str, res: Any, lang: str) -> str:
    ja = lang == "ja"
    iv = res.safe_interval
    if iv is None:
        interval = "なし" if ja else "none"
    else:
        interval = f"{iv[0]:g}〜{iv[1]:g}" if ja else f"{iv[0]:g}..{iv[1]:g}"
    verdict = (
        ("安全" if res.all_safe else "危険域あり") if ja else ("SAFE" if res.all_safe else "DANGER")
    )
    head = "安全区間" if ja else "safe interval"
    return f"{name}: {verdict}; {head} α = {interval}\n  {res.explain(lang)}"


def cmd_merge_scan(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401

        from .torch.merge import digits_batches, digits_pairs, scan
    except ImportError as e:
        _err(f"merge-scan needs PyTorch: pip install 'anet-lite[torch]' ({e})")
        return EXIT_USAGE
    if args.alphas < 2:
        _err(f"--alphas must be >= 2, got {args.alphas}")
        return EXIT_USAGE
    alphas = [round(i / (args.alphas - 1), 10) for i in range(args.alphas)]
    out = Path(args.out) if args.out else None
    try:
        if args.demo:
            if args.a or args.b or args.arch:
                raise ValueError("merge-scan: give A.pt B.pt or --demo, not both")
            pairs = [(n, a, b, None) for n, (a, b) in digits_pairs().items()]
            out = out or Path("merge_scan_demo")
        else:
            if not (args.a and args.b):
                raise ValueError("merge-scan needs A.pt and B.pt (or --demo)")
            factory = _merge_factory(args.arch)
            model = factory()
            sa, sb = _load_state_dict(args.a), _load_state_dict(args.b)
            try:
                model.load_state_dict(sa)
            except RuntimeError as e:
                raise ValueError(f"{args.a} does not fit the architecture: {e}") from None
            pairs = [(f"{Path(args.a).name} + {Path(args.b).name}", sa, sb, model)]
        batches = digits_batches()
        results = []
        for name, a, b, model in pairs:
            res = scan(
                a, b, batches, alphas, margin=args.margin, theta_min=args.theta_min, model=model
            )
            results.append((name, res))
        paths = []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name, res in results:
                fname = f"merge_{name}.html" if args.demo else "merge_scan.html"
                paths.append(str(out / fname))
                res.to_html(out / fname, title=f"Merge scan: {name}", lang=args.lang)
    except (TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{e.filename or ''}: {e.strerror or e}")
        return EXIT_USAGE
    danger = any(not r.all_safe for _, r in results)
    code = EXIT_OK if (args.demo or not danger) else EXIT_ALERT
    if args.json:
        d = {"exit_code": code, "reports": paths}
        d["scans"] = {n: r.to_dict() for n, r in results}
        print(json.dumps(_json_safe(d), ensure_ascii=False))
    else:
        for name, res in results:
            print(_merge_summary(name, res, args.lang))
        for pth in paths:
            print(f"report: {pth}")
    return code


# ---- demo ---------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    return _demo(list(args.args))


def _demo(argv: List[str]) -> int:
    """``anet-lite demo ...``: the demo parses its own flags (and its own --help)."""
    try:
        from .demo import run_demo
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing in (None, f"{__package__}.demo"):
            raise
        _err(f"demo needs {missing}: pip install 'anet-lite[torch]' (CPU: torch==2.13.0)")
        return EXIT_USAGE
    rc = run_demo(argv)
    return EXIT_OK if rc is None else int(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
