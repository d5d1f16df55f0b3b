"""MLflow: long-format CSVs, one-metric files and the file store, merged by step."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from .cells import _Clock, _num, _step_of
from .columns import ALIASES, FIELDS, _norm, _tag_field
from .csv_files import CsvReader, _csv_rows
from .detect import _sniff, _split_header, _walk_files
from .errors import LogFormatError, ReadStats
from .files import bounded_lines, check_regular

__all__ = ["MlflowReader"]

_EMPTY = (None,) * (len(FIELDS) - 1)  # a joined row's values, FIELDS[1:]


class MlflowReader(CsvReader):
    """MLflow logs: a file-store run folder, a long export (key, value, step) or a wide CSV
    (``metrics.*`` columns, read as a CSV)."""

    formats = ("mlflow",)

    def rows(self) -> Iterator[Any]:
        p = self.path
        if p.is_dir():
            return self._merge(self._mlflow_store_sources(p))
        head = _sniff(p).decode("utf-8", "replace").lstrip("\ufeff").split("\n", 1)[0]
        cells = [_norm(c) for c in _split_header(head.strip())]
        if len(cells) < 2 and len(head.split()) == 3:
            field = _tag_field(p.name, self.mapping) or "loss"
            self.columns[field] = p.name
            return self._merge([(field, self._store_file(p))])
        if "value" in cells and "step" in cells:
            keycol = next((c for c in ("key", "metric", "name") if c in cells), None)
            if keycol is None:  # one metric per file: step,timestamp,value
                field = _tag_field(p.stem, self.mapping) or "loss"
                self.columns[field] = f"{p.stem}:value"
                return self._merge([(field, self._long_rows(p, None))])
            return self._merge(self._long_sources(p, cells.index(keycol)))
        return self._read_csv()  # wide table: a CSV with metrics.* columns

    def _long_sources(self, p: Path, kcol: int) -> List[Tuple[str, Iterator[list]]]:
        keys: OrderedDict[str, None] = OrderedDict()
        for line, row in _csv_rows(p, ReadStats()):
            if line > 1 and len(row) > kcol:
                keys.setdefault(row[kcol], None)
        want = {v: k for k, v in self.mapping.items()}
        out = []
        for key in keys:
            field = want.get(key) or _tag_field(key, self.mapping)
            if field is None or field in self.columns:
                continue
            self.columns[field] = key
            out.append((field, self._long_rows(p, key, kcol)))
        return out

    def _long_rows(self, p: Path, key: Optional[str], kcol: int = -1) -> Iterator[list]:
        stats = self.stats
        rows = _csv_rows(p, stats)
        _, header = next(rows)
        low = [_norm(c) for c in header]
        vi, si = low.index("value"), low.index("step")
        ti = low.index("timestamp") if "timestamp" in low else None
        for line, row in rows:
            if len(row) < len(header):
                if not row:
                    continue
                row = row + [""] * (len(header) - len(row))
            if key is not None and row[kcol] != key:
                continue
            v = _num(row[vi], "value", stats, file=p, line=line, col=vi + 1, name=header[vi])
            s = _num(row[si], "step", stats, file=p, line=line, col=si + 1, name=header[si])
            if s is None:
                continue
            t = None
            if ti is not None:
                t = _num(row[ti], "time", stats, file=p, line=line, col=ti + 1, name=header[ti])
                t = None if t is None else t / 1000.0  # MLflow timestamps are epoch ms
            yield [_step_of(s, file=p, line=line, col=si + 1, name=header[si]), v, t, line]

    def _mlflow_store_sources(self, p: Path) -> List[Tuple[str, Iterator[list]]]:
        root = p / "metrics" if (p / "metrics").is_dir() else p
        want = {v: k for k, v in self.mapping.items()}
        out = []
        for f in _walk_files(root):
            check_regular(f, self.allow_special)
            key = f.relative_to(root).as_posix()
            field = want.get(key) or _tag_field(key, self.mapping)
            if field is None or field in self.columns:
                continue
            self.columns[field] = key
            out.append((field, self._store_file(f)))
        if "loss" not in self.columns:
            raise LogFormatError(
                "no loss metric file in this MLflow run folder (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=KEY",
                file=root,
                column_name="loss",
            )
        return out

    def _store_file(self, f: Path) -> Iterator[list]:
        """MLflow file store: one "timestamp value step" line per point."""
        stats = self.stats
        with open(f, encoding="utf-8", errors="strict") as fh:
            try:
                for line, raw in enumerate(bounded_lines(fh, f), 1):
                    parts = raw.split()
                    if not parts:
                        continue
                    if len(parts) not in (2, 3):
                        raise LogFormatError(
                            "expected 'timestamp value step'", file=f, line=line, column=1
                        )
                    cells = [
                        _num(c, "value", stats, file=f, line=line, col=i + 1, name=nm)
                        for i, (c, nm) in enumerate(zip(parts, ("timestamp", "value", "step")))
                    ]
                    step = cells[2] if len(cells) == 3 else 0.0
                    if step is None:
                        continue
                    t = None if cells[0] is None else cells[0] / 1000.0
                    yield [
                        _step_of(step, file=f, line=line, col=3, name="step"),
                        cells[1],
                        t,
                        line,
                    ]
            except UnicodeDecodeError:
                raise LogFormatError("not UTF-8 text (a binary file?)", file=f) from None

    def _merge(self, sources: List[Tuple[str, Iterator[list]]]) -> Iterator[list]:
        """k-way merge of per-metric streams (each sorted by step) into joined rows."""
        if not any(f == "loss" for f, _ in sources):
            raise LogFormatError(
                "no loss metric (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=KEY",
                file=self.path,
                column_name="loss",
            )
        stats = self.stats
        clock = _Clock(1.0, stats)

        def tagged(field: str, it: Iterator[list], k: int) -> Iterator[Tuple[int, int, Any]]:
            last = None
            for step, v, t, line in it:
                if last is not None and step < last:
                    raise LogFormatError(
                        f"steps of metric {self.columns.get(field, field)!r} go back "
                        f"({last} -> {step}); sort the file by metric and step",
                        file=self.path,
                        line=line,
                    )
                last = step
                yield step, k, (field, v, t, line)

        streams = [tagged(f, it, k) for k, (f, it) in enumerate(sources)]
        row: Optional[list] = None
        for step, _, (field, v, t, line) in heapq.merge(*streams):
            if row is None or row[0] != step:
                if row is not None:
                    yield row
                row = [step, *_EMPTY, line]
            row[FIELDS.index(field)] = v
            if t is not None and row[6] is None:
                row[6] = clock(t)
        if row is not None:
            yield row
        self.columns.setdefault("time", "timestamp")
