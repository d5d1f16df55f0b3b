"""The registry of log formats: ``--format`` name -> its ``FormatReader`` class.

A new format is one module with a ``FormatReader`` subclass and one entry here (plus, if
it can be told from a file's name or first bytes, a rule in ``detect.py`` for "auto").
"""

from __future__ import annotations

from typing import Dict, Tuple, Type

from .base import FormatReader
from .csv_files import CsvReader
from .jsonl_files import JsonlReader
from .mlflow_files import MlflowReader
from .tensorboard_files import TensorBoardReader

__all__ = ["FORMATS", "READERS", "reader_class"]

READERS: Dict[str, Type[FormatReader]] = {
    "csv": CsvReader,
    "jsonl": JsonlReader,
    "tensorboard": TensorBoardReader,
    "wandb": CsvReader,  # a W&B CSV export is a CSV with W&B's column names
    "mlflow": MlflowReader,
}

#: every accepted ``fmt`` / ``--format`` value
FORMATS: Tuple[str, ...] = ("auto",) + tuple(READERS)


def reader_class(fmt: str) -> Type[FormatReader]:
    """The ``FormatReader`` class of a format name (not "auto"); ValueError if unknown."""
    try:
        return READERS[fmt]
    except KeyError:
        names = ", ".join(("auto",) + tuple(READERS))
        raise ValueError(f"format must be one of {names}, got {fmt!r}") from None
