"""``detect_format``: the input format from a path's name and first bytes."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterator, List

from .columns import _BINARY_MARKERS, _norm
from .errors import LogFormatError

__all__ = ["detect_format"]


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4096)


def detect_format(path: Any) -> str:
    """ "csv", "jsonl", "tensorboard", "wandb" or "mlflow" from the name and first line."""
    p = Path(path)
    if p.is_dir():
        if any("tfevents" in c.name for c in _walk_files(p, limit=2000)):
            return "tensorboard"
        if (p / "metrics").is_dir() or p.name == "metrics":
            return "mlflow"
        raise LogFormatError(
            "a folder, but neither a TensorBoard run folder (no *tfevents* file) nor an "
            "MLflow run folder (no metrics/ folder)",
            file=p,
        )
    if "tfevents" in p.name:
        return "tensorboard"
    head = _sniff(p)
    if not head:
        raise LogFormatError("empty file", file=p, line=1)
    if any(m in head for m in _BINARY_MARKERS):
        raise LogFormatError(
            "binary data, not a text log (use --format tensorboard for event files)",
            file=p,
            line=1,
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4096-byte boundary
            line = head[: exc.start].count(b"\n") + 1
            raise LogFormatError("not UTF-8 text (a binary file?)", file=p, line=line) from None
        text = head[: exc.start].decode("utf-8")
    first = (text.lstrip("\ufeff").lstrip().splitlines() or [""])[0].strip()
    if first.startswith("{"):
        return "jsonl"
    ext = p.suffix.lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".csv", ".tsv", ".txt", "") or "," in first or "\t" in first:
        cells = _split_header(first)
        if len(cells) < 2:
            if len(first.split()) == 3 and _all_numbers(first.split()):
                return "mlflow"  # an MLflow file-store metric file: "timestamp value step"
            raise LogFormatError(
                "unknown log format: the first line is not a header with a step and a loss "
                "column (use --format)",
                file=p,
                line=1,
            )
        low = [_norm(c) for c in cells]
        if "value" in low and ({"key", "metric", "name"} & set(low) or "timestamp" in low):
            return "mlflow"
        if any(c.strip().endswith(("__MIN", "__MAX")) for c in cells) or any(
            " - " in c for c in cells
        ):
            return "wandb"
        if "_step" in low or "_runtime" in low:
            return "wandb"
        if any(c.strip().lower().startswith("metrics.") for c in cells):
            return "mlflow"
        return "csv"
    raise LogFormatError(
        f"unknown log format (extension {ext!r}); use --format csv|jsonl|tensorboard|wandb|mlflow",
        file=p,
        line=1,
    )


def _all_numbers(parts: List[str]) -> bool:
    try:
        [float(x) for x in parts]
    except ValueError:
        return False
    return True


def _split_header(first: str) -> List[str]:
    delim = "\t" if "\t" in first and "," not in first else ","
    try:
        return next(csv.reader([first], delimiter=delim), [])
    except csv.Error:  # a quote or line break where none may be: not a header
        return [first]


def _walk_files(p: Path, limit: int = 100000) -> Iterator[Path]:
    n = 0
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for f in sorted(files):
            n += 1
            if n > limit:
                return
            yield Path(root) / f
