"""Fuzzing the readers, the report and the tombstone verifier (hypothesis, bounded).

Whatever the bytes: a reader yields records or raises ``LogFormatError``; ``verify``
returns a result and never raises, and never accepts a log whose records changed;
``report`` writes a page or raises ValueError (exit 2). A few seconds per test.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from anet_lite.cli import main  # noqa: E402
from anet_lite.readers import LogFormatError, MissingDependencyError, open_log  # noqa: E402
from anet_lite.records.tombstone import TombstoneLog, read_lines, verify  # noqa: E402

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_CELLS = st.sampled_from(
    ["0", "1", "-1", "1.5", "1e308", "-1e308", "1e999", "nan", "inf", "-inf", "", "NA", "null",
     "1_000", "0x10", "9" * 30, "1" + "0" * 400, '"', '"1"', "x", " 2 ", "\u00e9", "\ud800"]
)
_SEPS = st.sampled_from([",", ",", ",", "\t", "\n", "\r", "\r\n", '"', ",,"])


def _read_all(path: Path, fmt: str = "auto") -> None:
    try:
        log = open_log(path, fmt)
        for rec in log:
            assert isinstance(rec.step, int) and isinstance(rec.loss, float)
    except (LogFormatError, MissingDependencyError):
        pass


_DIR = Path(tempfile.mkdtemp(prefix="anet-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)  # (a fixture cannot reach @given's helpers)


def _write(name: str, data: bytes) -> Path:
    """``data`` as ``name`` in a folder of this module (rewritten by every example)."""
    p = _DIR / name
    p.write_bytes(data)
    return p


@_SETTINGS
@given(st.lists(st.tuples(_CELLS, _SEPS), max_size=60))
def test_csv_like_text_never_escapes_as_another_exception(cells):
    body = "".join(c + s for c, s in cells)
    data = ("step,loss,grad_norm\n" + body).encode("utf-8", "surrogatepass")
    _read_all(_write("f.csv", data))
    _read_all(_write("f.tsv", data), "csv")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),
    max_leaves=8,
)


@_SETTINGS
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["step", "loss", "lr", "train", "x"]), _JSON, max_size=4),
        max_size=20,
    ),
    st.sampled_from(["", "\n", "{", "[" * 3000, '{"step":1' + "0" * 5000 + "}"]),
)
def test_jsonl_like_text_never_escapes_as_another_exception(objs, tail):
    text = "".join(json.dumps(o) + "\n" for o in objs) + tail
    _read_all(_write("f.jsonl", text.encode()))


@_SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_in_any_format(data):
    for name, fmt in (("r.csv", "csv"), ("r.jsonl", "jsonl"), ("r.csv", "auto"),
                      ("loss", "mlflow"), ("events.out.tfevents.1", "tensorboard")):
        _read_all(_write(name, data), fmt)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_damaged_tensorboard_records(data):
    pytest.importorskip("tensorboard")
    import struct

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    out = b""
    for i in range(5):
        ev = Event(step=i, wall_time=1.0)
        v = ev.summary.value.add()
        v.tag, v.simple_value = "loss", 1.0 / (i + 1)
        payload = ev.SerializeToString()
        head = struct.pack("<Q", len(payload))
        out += head + struct.pack("<I", masked_crc32c(head)) + payload
        out += struct.pack("<I", masked_crc32c(payload))
    buf = bytearray(out)
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(buf) - 1))
        buf[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    p = _write("events.out.tfevents.2", bytes(buf[:cut]))
    try:
        recs = list(open_log(p))
    except LogFormatError:
        return
    # read without an error: then every record is an original one
    assert [(r.step, r.loss) for r in recs] == [(i, pytest.approx(1.0 / (i + 1))) for i in
                                                  range(len(recs))]
    assert bytes(buf[:cut]) == out[:cut] or len(recs) == 5


# ---- the tombstone verifier ---------------------------------------------------------------

_BASE = Path(tempfile.mkdtemp(prefix="anet-fuzz-tomb-")) / "t.jsonl"
atexit.register(shutil.rmtree, _BASE.parent, True)
_LOG = TombstoneLog(_BASE)
for _i in range(4):
    _LOG.append("skip", policy="nan", scope={"step": _i}, evidence={"loss": "nan", "i": _i})
_ORIG = _BASE.read_bytes()
_RECORDS = [r for _, r in read_lines(_BASE)]


def _mutate(data: st.DataObject, raw: bytes) -> bytes:
    buf = bytearray(raw)
    kind = data.draw(st.sampled_from(["flip", "delete", "insert", "swap", "cut", "dup"]))
    if kind == "flip" and buf:
        at = data.draw(st.integers(0, len(buf) - 1))
        buf[at] = data.draw(st.integers(0, 255))
    elif kind == "delete" and buf:
        a = data.draw(st.integers(0, len(buf) - 1))
        del buf[a : a + data.draw(st.integers(1, 40))]
    elif kind == "insert":
        at = data.draw(st.integers(0, len(buf)))
        buf[at:at] = data.draw(st.binary(min_size=1, max_size=30))
    elif kind in ("swap", "dup") and buf:
        lines = bytes(buf).splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        j = data.draw(st.integers(0, len(lines) - 1))
        if kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(j, lines[i])
        buf = bytearray(b"".join(lines))
    else:
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    return bytes(buf)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_verify_never_raises_and_never_accepts_changed_records(data):
    raw = _ORIG
    for _ in range(data.draw(st.integers(1, 3))):
        raw = _mutate(data, raw)
    _BASE.write_bytes(raw)
    res = verify(_BASE)  # with the head file the log keeps
    assert isinstance(res.reason, str)
    if res.ok:
        kept = [r for _, r in read_lines(_BASE) if r is not None]
        assert kept == _RECORDS, res.reason
    loose = verify(_BASE, head_file=False)
    if loose.ok:  # without a head: a prefix of the records at most (a cut tail)
        kept = [r for _, r in read_lines(_BASE) if r is not None]
        assert kept == _RECORDS[: len(kept)], loose.reason


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_tombstone_log_opens_or_refuses_a_damaged_file(data):
    other = _BASE.with_name("u.jsonl")
    other.write_bytes(_mutate(data, _ORIG))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for cmd in (["tombstones", str(other)], ["tombstones", "--json", str(other)],
                    ["verify", str(other)]):
            assert main(cmd) in (0, 1), err.getvalue()
    try:
        log = TombstoneLog(other)
    except ValueError:
        return
    log.append("stop", policy="nan", scope={}, evidence={})
    res = verify(other)
    assert isinstance(res.ok, bool)


# ---- the report ---------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["step", "status", "alert", "theta", "evidence", "zscore"]),
            _JSON | st.dictionaries(st.sampled_from(["loss", "cause", "spike", "event"]), _JSON),
            max_size=6,
        ),
        min_size=1,
        max_size=15,
    )
)
def test_report_on_damaged_metrics_jsonl(lines):
    from anet_lite.report.html import write_report

    run = _DIR / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    (run / "tombstones.jsonl").write_bytes(_ORIG[: len(_ORIG) // 2] + b'{"bad": true}\n')
    try:
        page = write_report(run).read_text()
    except ValueError:
        return
    assert "<script" not in page
