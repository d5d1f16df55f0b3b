"""Bounded reading: regular files only (unless asked), lines capped at ``MAX_LINE``.

Every reader takes its lines from here, so memory stays bounded by a constant whatever
the input: a file without a newline, ``/dev/zero`` or a 2 GB line is an error naming the
file and line, never a read of the whole thing into memory. FIFOs, devices and sockets
are refused (reading one may block forever) unless ``allow_special`` is set.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import LogFormatError

__all__ = ["MAX_LINE", "bounded_lines", "check_regular", "is_regular"]

MAX_LINE = 8 * 1024 * 1024
"""Longest line a text reader accepts (characters for text, bytes for binary reads)."""


def is_regular(path: Any) -> bool:
    """``path`` is a regular file (symlinks followed); False for FIFOs, devices, missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_regular(path: Any, allow_special: bool = False) -> None:
    """LogFormatError unless ``path`` is a regular file (or ``allow_special`` and it exists)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise LogFormatError(f"cannot read ({exc.strerror or exc})", file=path) from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    if allow_special:
        return
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) else "special"
    raise LogFormatError(
        f"not a regular file ({kind}; reading it could block forever); "
        "pass --allow-special (with --format) to read it",
        file=path,
    )


def bounded_lines(f: IO[Any], path: Path, first_line: int = 1) -> Iterator[Any]:
    """The lines of ``f`` (str or bytes, newline kept), each at most ``MAX_LINE`` long;
    LogFormatError naming ``path`` and the line number for a longer one."""
    readline = f.readline
    limit = MAX_LINE + 1
    no = first_line - 1
    while True:
        line = readline(limit)
        if not line:
            return
        no += 1
        if len(line) >= limit:
            raise LogFormatError(
                f"longer than {MAX_LINE:,} characters (no newline: not a text log?)",
                file=path,
                line=no,
            )
        yield line
