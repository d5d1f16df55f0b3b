"""TensorBoard event files: scalars by tag, joined by step in a bounded buffer."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterator, Optional

from .base import FormatReader
from .cells import _Clock
from .columns import ALIASES, FIELDS, _tag_field
from .detect import _walk_files
from .errors import LogFormatError, MissingDependencyError
from .files import check_regular
from .tfrecord import tf_records

__all__ = ["TensorBoardReader"]

_EMPTY = (None,) * (len(FIELDS) - 1)  # a joined row's values, FIELDS[1:]


class TensorBoardReader(FormatReader):
    """TensorBoard event files (a file or a folder of them): scalars by tag, joined by step."""

    formats = ("tensorboard",)
    text = False

    def rows(self) -> Iterator[list]:
        try:
            from tensorboard.compat.proto.event_pb2 import Event
        except ImportError:
            raise MissingDependencyError(
                "reading TensorBoard event files needs the tensorboard package: "
                "pip install 'anet-lite[tensorboard]'"
            ) from None
        p = self.path
        files = [p] if not p.is_dir() else [f for f in _walk_files(p) if "tfevents" in f.name]
        if not files:
            raise LogFormatError("no TensorBoard event file (*tfevents*) in this folder", file=p)
        stats = self.stats
        tag_field: Dict[str, Optional[str]] = {}
        want = {v: k for k, v in self.mapping.items()}
        buf: OrderedDict[int, list] = OrderedDict()
        lookback = 256
        clock = _Clock(1.0, stats)
        for path in files:
            if path is not p:
                check_regular(path, self.allow_special)
            try:
                for n, ev in enumerate(_events(path, Event), 1):
                    stats.lines += 1
                    summ = getattr(ev, "summary", None)
                    if summ is None or not summ.value:
                        continue
                    for val in summ.value:
                        tag = val.tag
                        field = tag_field.get(tag, "?")
                        if field == "?":
                            field = want.get(tag) or _tag_field(tag, self.mapping)
                            tag_field[tag] = field
                            if field is not None and field not in self.columns:
                                self.columns[field] = tag
                        if field is None:
                            continue
                        x = _tb_value(val)
                        if x is None:
                            continue
                        if x - x != 0.0:
                            stats.non_finite[field] = stats.non_finite.get(field, 0) + 1
                        step = int(ev.step)
                        rec = buf.get(step)
                        if rec is None:
                            rec = [step, *_EMPTY, n]
                            buf[step] = rec
                            while len(buf) > lookback:
                                out = buf.popitem(last=False)[1]
                                out[6] = clock(out[6])
                                yield out
                        rec[FIELDS.index(field)] = x
                        if rec[6] is None and "time" not in self.mapping:
                            rec[6] = float(ev.wall_time)
            except (OSError, ValueError) as exc:
                if isinstance(exc, LogFormatError):
                    raise
                raise LogFormatError(
                    f"not a readable TensorBoard event file ({exc})",
                    file=path,
                    line=stats.lines or None,
                ) from None
        for rec in buf.values():
            rec[6] = clock(rec[6])
            yield rec
        if "loss" not in self.columns:
            raise LogFormatError(
                "no loss scalar (looked for tags "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=TAG",
                file=p,
                column_name="loss",
            )
        if "time" not in self.mapping:
            self.columns.setdefault("time", "wall_time")

    # -- MLflow -----------------------------------------------------------------------------


def _events(path: Any, event_cls: Any) -> Iterator[Any]:
    """The Event protos of one file, every record's CRCs checked (damage is an error)."""
    from google.protobuf.message import DecodeError

    with open(path, "rb") as f:
        for offset, data in tf_records(f, path):
            try:
                yield event_cls.FromString(data)
            except (DecodeError, RecursionError):
                raise LogFormatError(
                    f"record at byte offset {offset} is not a TensorBoard event (valid CRC, "
                    "but not an Event protobuf)",
                    file=path,
                ) from None


def _tb_value(val: Any) -> Optional[float]:
    if val.HasField("simple_value"):
        return float(val.simple_value)
    if val.HasField("tensor"):
        try:
            from tensorboard.util import tensor_util

            arr = tensor_util.make_ndarray(val.tensor)
        except Exception:
            return None
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            return None
        return float(arr.reshape(()))
    return None
