"""Streaming training-log readers: CSV, JSONL, TensorBoard, W&B and MLflow exports.

    from anet_lite.readers import open_log
    log = open_log("train.csv", mapping={"loss": "train/loss"})
    for rec in log:  # Record(step, loss, grad_norm, ..., time, param_norm, processivity)
        snap = monitor.update(rec.loss, step=rec.step, grad_norm=rec.grad_norm, ...)
    log.stats.as_dict()  # gaps, non-finite cells, time resets, ...

One ``FormatReader`` per format (``csv_files``, ``jsonl_files``, ``tensorboard_files``,
``mlflow_files``), registered by name in ``READERS`` (``registry.py``); ``LogReader`` joins
their rows by step, counts gaps and yields ``Record``s.

Every reader is a generator over the file: memory stays constant in the log length (the
MLflow long format and the MLflow file store read each metric's rows in their own pass and
merge them by step; TensorBoard scalars of different tags are joined by step in a bounded
buffer). Bad input raises ``LogFormatError`` naming the file, line and column. Lines are capped at
``MAX_LINE`` characters; FIFOs and devices are refused unless ``allow_special=True``.

Cells: empty, ``null``, ``None``, ``NA`` and ``-`` are *gaps* (not measured; counted).
``nan`` / ``inf`` are real values (a NaN loss is a collapse, not a gap) and counted too.
Rows without a loss are skipped and counted. ``time`` is seconds: columns named ``*_ms``
and MLflow timestamps (epoch ms) are divided by 1000; a clock that restarts (goes back)
is stitched so that it keeps increasing, and each restart is counted.
"""

from .base import FormatReader
from .columns import ALIASES, FIELDS, parse_mapping, resolve_columns  # noqa: F401 - importable here, as before
from .detect import detect_format
from .errors import LogFormatError, MissingDependencyError, ReadStats, Record
from .files import MAX_LINE
from .reader import LogReader, open_log
from .registry import FORMATS, READERS

__all__ = [
    "FIELDS",
    "FORMATS",
    "MAX_LINE",
    "READERS",
    "FormatReader",
    "LogFormatError",
    "LogReader",
    "MissingDependencyError",
    "ReadStats",
    "Record",
    "detect_format",
    "open_log",
    "parse_mapping",
]
