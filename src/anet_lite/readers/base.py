"""``FormatReader``: the interface every log format implements (one module per format).

A format reader turns one file or folder into *row lists*: ``[step, loss, grad_norm,
step_norm, noise, lr, time, param_norm, processivity, line]`` (``columns.FIELDS``' values,
then the line number; ``None`` = not measured), or ``csv_files._Block``s of such rows
already converted column-wise. ``LogReader`` joins rows of the same step, counts gaps and
makes ``Record``s, the same for every format. Register a new reader in ``registry.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

from .errors import ReadStats

__all__ = ["FormatReader"]


class FormatReader:
    """One log format. Subclasses set ``formats`` and implement ``rows()``.

    ``formats``: the ``--format`` names this class reads; ``text``: True when the format
    is text (an empty file is then an error before reading). ``rows()`` fills ``columns``
    (field -> the source column it was read from) and counts into ``stats`` as it goes;
    bad input raises ``LogFormatError`` naming the file, line and column.
    """

    formats: Tuple[str, ...] = ()
    text = True

    def __init__(
        self,
        path: Path,
        fmt: str,
        mapping: Dict[str, str],
        allow_special: bool,
        stats: ReadStats,
    ) -> None:
        self.path = path
        self.format = fmt
        self.mapping = mapping
        self.allow_special = allow_special
        self.stats = stats
        self.columns: Dict[str, str] = {}

    def rows(self) -> Iterator[Any]:
        """Row lists (or blocks of them) in file order; see the module docstring."""
        raise NotImplementedError
