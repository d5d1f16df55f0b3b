"""``anet-lite``: replay a training log through the Monitor, write reports, verify tombstones.

    anet-lite analyze train.csv            # exit 0 healthy, 1 alerts found, 2 bad input
    anet-lite report run.anet/             # (re)write run.anet/report.html
    anet-lite verify run.anet/tombstones.jsonl

``main(argv)`` returns the exit code (it never calls ``sys.exit``), so it can be tested
in-process; ``python -m anet_lite`` and the ``anet-lite`` script call it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional

from ._common import EXIT_ALERT, EXIT_OK, EXIT_USAGE
from ._common import err as _err
from .analyze import add_analyze_parser, cmd_analyze
from .models import add_merge_scan_parser, add_sig_check_parser
from .tombstones import add_tombstones_parser, add_verify_parser
from .watch import add_watch_parser, cmd_watch

__all__ = ["EXIT_ALERT", "EXIT_OK", "EXIT_USAGE", "build_parser", "cmd_analyze", "main"]

_CODES = """exit codes:
  0  healthy: no alert
  1  alerts found
  2  usage or input error (bad file, unknown format, missing column)"""

_MAIN_EPILOG = f"""examples:
  anet-lite analyze train.csv
  anet-lite analyze runs/exp1 --format tensorboard --out exp1.anet
  anet-lite report exp1.anet
  anet-lite verify exp1.anet/tombstones.jsonl
  anet-lite watch runs/exp1/metrics.csv --exec "./page_me.sh"

{_CODES}
"""

_REPORT_EPILOG = """examples:
  anet-lite report train.anet
  anet-lite report train.anet --out /tmp/train-report.html

exit codes:
  0  report written
  2  not a run folder (no metrics.jsonl / metrics.csv) or unreadable
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
    from .. import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="anet-lite",
        description="Detect, explain and record the moment a training run starts to fail.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"anet-lite {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    add_analyze_parser(sub, fmt, _CODES, cmd_analyze)
    add_watch_parser(sub, fmt, cmd_watch)

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

    add_verify_parser(sub, fmt)

    d = sub.add_parser(
        "demo",
        help="run the built-in demo",
        description="Run the built-in demo.",
        epilog=_DEMO_EPILOG,
        formatter_class=fmt,
    )
    d.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_demo)
    add_tombstones_parser(sub, fmt)
    add_sig_check_parser(sub, fmt)
    add_merge_scan_parser(sub, fmt)
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


# ---- report -------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import plots_available, write_report

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
