"""``anet-lite watch PATH``: follow a live training log as it grows, alert as it happens.

For a job that is already running and whose code cannot be changed: the log it writes
(CSV / JSONL file, TensorBoard folder or event file, MLflow run folder) is read with the
same readers as ``analyze`` and fed to a Monitor as new steps appear.

* Text files (CSV, JSONL) are followed from a byte offset: each poll reads the complete
  lines added since the last one (a line still being written waits for its newline) and
  parses them with the reader (the CSV header is kept). Line numbers in errors are the
  file's. A file that shrinks (rotated, rewritten) is read again from its start.
* TensorBoard and MLflow folders are read again at each poll (their readers merge many
  files by step); steps already seen are skipped. A record cut at the end of a file being
  written is retried at the next poll.
* Each step's snapshot goes to the run folder (``metrics.csv``, ``events.jsonl``, as
  ``analyze`` writes them). The first alert of each incident (and each change of cause)
  is printed on stdout with its explanation; a status line (step, status, θ, alerts,
  steps/s and a spinner) goes to stderr.
* ``--exec CMD`` runs CMD (split with ``shlex``, never through a shell) for each printed
  alert, with ANET_RUN, ANET_STEP, ANET_CAUSE, ANET_STATUS and ANET_EXPLANATION in its
  environment: page someone, save a checkpoint, stop the job, with one's own tools.
* Stops on Ctrl-C, after ``--idle-timeout`` seconds without a new step, or at the first
  collapsed step; then writes ``meta.json`` and ``report.html`` like ``analyze``.

Exit codes: 0 no alert; 1 alerts (always 1 after a collapse); 2 bad input. Steps that go
back (a restarted job) are skipped: only steps after the last one seen are read.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..readers.registry import FORMATS
from ..report.runfolder import RunFolderWriter
from ._common import EXIT_ALERT, EXIT_OK, EXIT_USAGE
from ._common import err as _err
from .analyze import default_out

_TEXT = ("csv", "wandb", "jsonl")
_SPIN = "|/-\\"
_NO_LOSS = "no step with a loss value"


__all__ = [
    "add_watch_parser",
    "cmd_watch",
]


def add_watch_parser(sub: Any, fmt: Any, func: Any) -> None:
    """Register ``watch`` on the ``anet-lite`` subparsers."""
    epilog = """examples:
  anet-lite watch runs/exp1/metrics.csv
  anet-lite watch runs/exp1 --format tensorboard --idle-timeout 600
  anet-lite watch train.jsonl --exec "notify-send anet-lite alert"
  anet-lite watch mlruns/0/RUN_ID --exec "./page_me.sh --urgent"

--exec runs CMD (split like a shell would, but no shell) once per alert incident, with
ANET_RUN, ANET_STEP, ANET_CAUSE, ANET_STATUS and ANET_EXPLANATION in its environment.

exit codes:
  0  stopped (Ctrl-C or --idle-timeout) with no alert
  1  alerts seen; also at once when a step collapses (NaN/inf)
  2  usage or input error (bad file, unknown format, missing column)
"""
    w = sub.add_parser(
        "watch",
        help="follow a live training log; print each alert as it happens",
        description="Follow a training log that is still being written (CSV, JSONL, "
        "TensorBoard, MLflow), print each alert with its explanation as it happens, and "
        "write a run folder with a report when stopped.",
        epilog=epilog,
        formatter_class=fmt,
    )
    w.add_argument("path", metavar="PATH", help="log file or run folder being written")
    w.add_argument("--out", metavar="DIR", help="run folder to write (default: <stem>.anet/)")
    w.add_argument("--map", metavar="FIELD=COLUMN", action="append", default=[])
    w.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
    )
    w.add_argument("--interval", type=float, default=2.0, help="seconds between polls (2)")
    w.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        metavar="SEC",
        help="stop after SEC seconds without a new step (default 0: until Ctrl-C)",
    )
    w.add_argument("--exec", dest="exec_cmd", metavar="CMD", help="run CMD on each alert")
    w.add_argument("--exec-timeout", type=float, default=60.0, metavar="SEC")
    w.add_argument("--lang", default="en", choices=("en", "ja"))
    w.add_argument("--no-report", action="store_true", help="do not write report.html")
    w.add_argument("--quiet", "-q", action="store_true", help="no status line")
    w.set_defaults(func=func)


# ---- following a log --------------------------------------------------------------------


class _Follower:
    """New ``Record``s of a log since the last poll (see the module docstring)."""

    def __init__(self, path: Path, fmt: str, mapping: Dict[str, str]) -> None:
        from ..readers import detect_format

        self.path, self.mapping = path, mapping
        self.format = detect_format(path) if fmt == "auto" else fmt
        self.offset = 0  # text files: bytes consumed
        self.lines = 0  # text files: lines consumed (the header included)
        self.header = b""
        self.columns: Dict[str, str] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="anet-watch-"))

    def close(self) -> None:
        for f in self._tmp.iterdir():
            f.unlink()
        self._tmp.rmdir()

    def poll(self) -> Iterator[Any]:
        """The records read since the last poll (a generator: read it to the end)."""
        if self.format in _TEXT:
            yield from self._poll_text()
        else:
            yield from self._read(self.path, self.format, 0)

    def _poll_text(self) -> Iterator[Any]:
        size = self.path.stat().st_size
        if size < self.offset:  # rotated or rewritten: read it from its start again
            self.offset, self.lines, self.header = 0, 0, b""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            new = f.read(size - self.offset)
        end = new.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        chunk = new[: end + 1]
        self.offset += len(chunk)
        base = self.lines
        self.lines += chunk.count(b"\n")
        if self.format != "jsonl" and not self.header:
            cut = chunk.index(b"\n") + 1
            self.header, chunk = chunk[:cut], chunk[cut:]
            base += 1
        if not chunk.strip():
            return
        name = "chunk.jsonl" if self.format == "jsonl" else "chunk.csv"
        tmp = self._tmp / name
        head = b"" if self.format == "jsonl" else self.header
        tmp.write_bytes(head + chunk)
        yield from self._read(tmp, self.format, base - (1 if head else 0))

    def _read(self, path: Path, fmt: str, line_offset: int) -> Iterator[Any]:
        from ..readers import LogFormatError, open_log

        log = open_log(path, fmt, self.mapping)
        try:
            yield from log
        except LogFormatError as e:
            if e.reason.startswith(_NO_LOSS):
                return  # these rows had no loss yet (or the file has none so far)
            if fmt not in _TEXT:
                raise _Torn(e) from None  # maybe a record being written: try again later
            line = None if e.line is None else e.line + line_offset
            raise LogFormatError(
                e.reason, file=self.path, line=line, column=e.column, column_name=e.column_name
            ) from None
        finally:
            if log.columns:
                self.columns = dict(log.columns)


class _Torn(Exception):
    """A binary log could not be read to its end this time (kept for the last poll)."""

    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err


# ---- alerts, --exec, the status line ----------------------------------------------------


class _Alerts:
    """Prints the first alert of each incident (and each change of cause), runs --exec."""

    def __init__(self, run: str, exec_cmd: Optional[str], timeout: float, lang: str) -> None:
        self.run, self.timeout, self.lang = run, timeout, lang
        self.argv = shlex.split(exec_cmd) if exec_cmd else None
        self.count, self.printed = 0, 0
        self._prev: Optional[Tuple[Any, ...]] = None

    def see(self, snap: Any) -> None:
        if not snap.alert:
            self._prev = None
            return
        self.count += 1
        cause = str((snap.evidence or {}).get("cause") or snap.status)
        key = (snap.status, cause)
        if self._prev is not None and self._prev == key:
            return
        self._prev = key
        self.printed += 1
        words = _explain(snap, self.lang)
        sys.stdout.write(f"ALERT step {snap.step}: {snap.status} ({cause}) — {words}\n")
        sys.stdout.flush()
        if self.argv:
            self._exec(snap, cause, words)

    def _exec(self, snap: Any, cause: str, words: str) -> None:
        env = dict(os.environ)
        env.update(
            ANET_RUN=self.run,
            ANET_STEP=str(snap.step),
            ANET_CAUSE=cause,
            ANET_STATUS=str(snap.status),
            ANET_EXPLANATION=words,
        )
        try:
            rc = subprocess.run(self.argv, env=env, timeout=self.timeout, check=False).returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            _err(f"--exec {shlex.join(self.argv)}: {e}")
            return
        if rc:
            _err(f"--exec {shlex.join(self.argv)}: exit status {rc}")


def _explain(snap: Any, lang: str) -> str:
    try:
        return snap.explain(lang)
    except Exception as e:  # words are advice: never stop the watch for them
        return f"(no explanation: {e!r})"


class _Status:
    """One line on stderr: \\r-refreshed on a terminal, every 30 s otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.spin = itertools.cycle(_SPIN)
        self.t0 = self.last = time.monotonic()

    def show(self, steps: int, snap: Any, alerts: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not self.tty and not final and now - self.last < 30):
            return
        self.last = now
        rate = steps / max(now - self.t0, 1e-9)
        what = "waiting for steps" if snap is None else f"step {snap.step} {snap.status}"
        theta = "" if snap is None else f" θ={snap.theta:.2f}"
        line = f"{next(self.spin)} watching: {what}{theta} | {steps:,} steps | {alerts} alerts"
        line += f" | {rate:.1f} steps/s"
        if self.tty:
            sys.stderr.write("\r" + line[:120].ljust(120) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# ---- the command --------------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow ``args.path``; see the module docstring. Returns the exit code."""
    from ..readers import LogFormatError, MissingDependencyError, parse_mapping

    src = Path(args.path)
    if args.interval <= 0 or args.idle_timeout < 0 or args.exec_timeout <= 0:
        _err("--interval and --exec-timeout must be > 0, --idle-timeout >= 0")
        return EXIT_USAGE
    try:
        mapping = parse_mapping(args.map)
        argv_ok = shlex.split(args.exec_cmd) if args.exec_cmd else None
        if args.exec_cmd is not None and not argv_ok:
            raise ValueError("--exec: empty command")
        if not src.exists():
            raise LogFormatError("no such file or folder", file=src)
        follower = _Follower(src, args.format, mapping)
    except (ValueError, MissingDependencyError) as e:  # LogFormatError is a ValueError
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{src}: {e.strerror or e}")
        return EXIT_USAGE
    out = Path(args.out) if args.out else default_out(src)
    old = _on_sigterm()
    try:
        _fresh_out(out)
        return _watch(args, src, follower, out)
    except OSError as e:
        _err(f"{e.filename or out}: {e.strerror or e}")
        return EXIT_USAGE
    finally:
        follower.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _on_sigterm() -> Any:
    """SIGTERM (``kill``, a scheduler) stops the watch as Ctrl-C does: the run folder and
    report are still written. Returns the previous handler (None off the main thread)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def _fresh_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", str(out))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "events.jsonl", "meta.json", "report.html"):
        if (out / name).is_file():
            (out / name).unlink()  # a fresh watch, not an append to an old one


def _watch(args: argparse.Namespace, src: Path, follower: _Follower, out: Path) -> int:
    from ..monitor import Monitor
    from ..report.html import RunData

    data = RunData(lang=args.lang)
    writer = RunFolderWriter(out, data)
    run = src.name if src.is_dir() else src.stem
    alerts = _Alerts(run, args.exec_cmd, args.exec_timeout, args.lang)
    state = _Loop(Monitor(), writer, alerts, _Status(not args.quiet))
    code, error = EXIT_OK, None
    try:
        error = state.run(follower, args.interval, args.idle_timeout)
    except KeyboardInterrupt:
        sys.stderr.write("\nanet-lite: watch stopped (Ctrl-C)\n")
    finally:
        writer.close()
        state.status.show(state.steps, state.last, alerts.count, final=True)
    if error is not None:
        _err(str(error))
        code = EXIT_USAGE
    elif alerts.count:
        code = EXIT_ALERT
    _finish(args, src, follower, out, data, state)
    return code


class _Loop:
    """The poll loop's state: the Monitor, the run folder, the last step seen."""

    def __init__(self, monitor: Any, writer: Any, alerts: _Alerts, status: _Status) -> None:
        self.monitor, self.writer, self.alerts, self.status = monitor, writer, alerts, status
        self.steps, self.last_step = 0, None  # type: int, Optional[int]
        self.last: Any = None
        self.collapsed = False
        self.torn: Optional[_Torn] = None

    def run(self, follower: _Follower, interval: float, idle: float) -> Optional[Exception]:
        """Poll until idle / collapse; returns the input error that ended it, if any."""
        from ..readers import LogFormatError, MissingDependencyError

        quiet_since = time.monotonic()
        while True:
            before = self.steps
            try:
                self.feed(follower.poll())
            except (LogFormatError, MissingDependencyError, TypeError) as e:
                return e
            except _Torn as e:
                self.torn = e  # a record being written: the next poll reads it whole
            else:
                self.torn = None
            n = self.steps - before
            self.writer.flush()
            self.status.show(self.steps, self.last, self.alerts.count)
            if self.collapsed:
                return None
            now = time.monotonic()
            if n:
                quiet_since = now
            elif idle and now - quiet_since >= idle:
                return None
            time.sleep(interval)

    def feed(self, records: Iterator[Any]) -> None:
        update = self.monitor.update
        for step, loss, g, sn, noise, lr, t, pn, proc in records:
            if self.last_step is not None and step <= self.last_step:
                continue  # seen already (a folder read again) or a restarted job
            snap = update(
                loss,
                step=step,
                grad_norm=g,
                step_norm=sn,
                noise=noise,
                lr=lr,
                time=t,
                param_norm=pn,
                processivity=proc,
            )
            self.last_step, self.last = step, snap
            self.writer.add(snap)
            self.alerts.see(snap)
            self.steps += 1
            if snap.status == "collapsed":
                self.collapsed = True
                return


def _finish(
    args: argparse.Namespace,
    src: Path,
    follower: _Follower,
    out: Path,
    data: Any,
    state: _Loop,
) -> None:
    """meta.json and report.html, as ``analyze`` writes them; a summary on stdout."""
    import json

    from ..records.outputs import write_atomic
    from .analyze import run_meta

    meta = run_meta(src, follower.format, follower.columns, args.lang, data)
    meta.update(watched=True, stopped_at_collapse=state.collapsed, last_step=state.last_step)
    write_atomic(out / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    lines: List[str] = [f"{src}: watched {state.steps:,} steps ({follower.format})"]
    if state.collapsed:
        lines.append(f"COLLAPSED at step {state.last_step}: stopped watching")
    if state.torn is not None:
        lines.append(f"note: the last read ended early ({state.torn}); later steps not seen")
    lines.append(f"alerts: {state.alerts.count:,} steps in {len(data.incidents):,} incidents")
    lines.append(f"run dir: {out}")
    if not args.no_report and data.steps:
        from ..report.html import write_report

        lines.append(f"report: {write_report(out, data=data)}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
