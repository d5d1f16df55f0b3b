"""What every ``anet-lite`` command shares: exit codes and the one-line error message."""

from __future__ import annotations

import sys

__all__ = ["EXIT_ALERT", "EXIT_OK", "EXIT_USAGE", "err"]

EXIT_OK = 0  # healthy / ok
EXIT_ALERT = 1  # alerts found / a broken chain
EXIT_USAGE = 2  # usage or input error: bad file, unknown format, missing column


def err(msg: str) -> None:
    """``anet-lite: error: MSG`` on stderr (no traceback; the command then returns 2)."""
    sys.stderr.write(f"anet-lite: error: {msg}\n")
