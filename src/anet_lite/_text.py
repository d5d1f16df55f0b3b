"""Text tables for terminals: display widths where CJK characters count 2 columns."""

from __future__ import annotations

import unicodedata

__all__ = ["pad", "width"]


def width(s: str) -> int:
    """The number of terminal columns ``s`` takes (East Asian wide / full-width: 2)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def pad(s: str, w: int) -> str:
    """``s`` padded with spaces to ``w`` terminal columns."""
    return s + " " * (w - width(s))
