"""Hostile and damaged inputs: never a traceback, a hang, a deleted input or stored XSS.

Each test reproduces one finding of a red-team pass (issue 22) on real files.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest

from anet_lite.cli import main
from anet_lite.readers import LogFormatError, open_log
from anet_lite.records.tombstone import TombstoneLog, verify


def _csv(path: Path, n: int = 120) -> Path:
    with open(path, "w") as f:
        f.write("step,loss,grad_norm\n")
        for i in range(n):
            f.write(f"{i},{2.0 - i * 1e-3:.6f},{1.0 + (i % 7) * 0.01:.4f}\n")
    return path


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# ---- 2: analyze never deletes or truncates its input ----------------------------------------


@pytest.mark.parametrize("name", ["metrics.csv", "metrics.jsonl", "meta.json", "events.jsonl"])
def test_analyze_refuses_an_out_that_would_overwrite_its_input(tmp_path, capsys, name):
    run = tmp_path / "run"
    run.mkdir()
    src = run / name
    if name.endswith(".csv"):
        _csv(src)
    else:
        src.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(50)))
    before = src.read_bytes()
    code, _, err = _run(["analyze", src, "--out", run, "-q", "--format", "auto"], capsys)
    assert code == 2 and "--out" in err and name in err
    assert src.read_bytes() == before


def test_analyze_refuses_an_out_inside_an_input_folder(tmp_path, capsys):
    store = tmp_path / "mlrun"
    (store / "metrics").mkdir(parents=True)
    (store / "metrics" / "loss").write_text("".join(f"{i} 1.0 {i}\n" for i in range(30)))
    code, _, err = _run(["analyze", store, "--out", store / "metrics", "-q"], capsys)
    assert code == 2 and "inside the input" in err
    assert sorted(p.name for p in (store / "metrics").iterdir()) == ["loss"]


def test_analyze_refuses_a_hard_link_to_its_input(tmp_path, capsys):
    src = _csv(tmp_path / "train.csv")
    out = tmp_path / "out"
    out.mkdir()
    os.link(src, out / "metrics.csv")
    before = src.read_bytes()
    code, _, err = _run(["analyze", src, "--out", out, "-q"], capsys)
    assert code == 2 and "metrics.csv" in err
    assert src.read_bytes() == before


# ---- 3: stored XSS, file content overriding computed fields ------------------------------


def _analyzed(tmp_path, capsys) -> Path:
    out = tmp_path / "r.anet"
    code, _, _ = _run(["analyze", _csv(tmp_path / "t.csv"), "--out", out, "-q"], capsys)
    assert code in (0, 1)
    return out


def test_report_escapes_tombstone_lines_and_keeps_its_own_line_numbers(tmp_path, capsys):
    out = _analyzed(tmp_path, capsys)
    log = TombstoneLog(out / "tombstones.jsonl")
    log.append("rollback", policy="drift", scope={"step": 3}, evidence={"reason": "x"})
    evil = {"bad": True, "line": "<script>alert(1)</script>"}
    with open(out / "tombstones.jsonl", "a") as f:
        f.write(json.dumps(evil) + "\n")
        f.write(json.dumps({"event": "<img src=x onerror=alert(2)>", "line": 999}) + "\n")
    code, _, _ = _run(["report", out], capsys)
    assert code == 0
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page or "(not" in page
    assert "<td>999</td>" not in page  # the row shows its real line number, 3
    assert "<td>2</td>" in page and "<td>3</td>" in page


# ---- 4: a diverging run's numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    "rows",
    [
        ["0,1", "1,1e250"],
        [f"{i},1e308" for i in range(300)],
        [f"{i},{'-1e308' if i % 2 else '1e308'}" for i in range(50)],
        ["0,1", "1,1e-320", "2,5e-324", "3,1e300"],
    ],
)
def test_huge_and_tiny_numbers_still_give_a_report(tmp_path, capsys, rows):
    pytest.importorskip("matplotlib")
    src = tmp_path / "d.csv"
    src.write_text("step,loss\n" + "\n".join(rows) + "\n")
    code, _, err = _run(["analyze", src, "--out", tmp_path / "o", "-q"], capsys)
    assert code in (0, 1), err
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<svg" in page


def test_report_reads_string_numbers_in_metrics_jsonl(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": i, "status": "healthy", "evidence": {"loss": "1e999"}} for i in range(5)]
    lines.append({"step": 5, "status": "healthy", "evidence": {"loss": "not a number"}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    code, _, err = _run(["report", run], capsys)
    assert code == 0, err


# ---- 5: damaged TensorBoard files ---------------------------------------------------------


def _tb_file(tmp_path: Path, n: int = 300) -> Path:
    pytest.importorskip("tensorboard")
    tb = pytest.importorskip("torch.utils.tensorboard")
    logdir = tmp_path / "tb"
    w = tb.SummaryWriter(log_dir=str(logdir))
    for i in range(n):
        w.add_scalar("train/loss", 2.0 / (1 + i), i)
    w.close()
    return next(logdir.glob("*tfevents*"))


def test_tensorboard_flipped_byte_is_reported_with_its_offset(tmp_path, capsys):
    ev = _tb_file(tmp_path)
    data = bytearray(ev.read_bytes())
    at = len(data) // 3
    data[at] ^= 0x01
    ev.write_bytes(bytes(data))
    with pytest.raises(LogFormatError, match="offset") as ei:
        list(open_log(ev))
    assert str(ev) in str(ei.value)
    code, _, err = _run(["analyze", ev, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2 and "CRC" in err


def test_tensorboard_truncated_file_is_reported(tmp_path):
    ev = _tb_file(tmp_path)
    data = ev.read_bytes()
    ev.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogFormatError, match="truncated"):
        list(open_log(ev))


def _tfrecord(payload: bytes, length: int | None = None) -> bytes:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    head = struct.pack("<Q", len(payload) if length is None else length)
    return (
        head
        + struct.pack("<I", masked_crc32c(head))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


@pytest.mark.parametrize(
    "record",
    [lambda: _tfrecord(b"\xff\xff\xff garbage"), lambda: _tfrecord(b"abc", length=2**40)],
)
def test_tensorboard_bad_records_exit_2(tmp_path, capsys, record):
    pytest.importorskip("tensorboard")
    ev = tmp_path / "events.out.tfevents.1.host"
    ev.write_bytes(record())
    code, _, err = _run(["analyze", ev, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2 and str(ev) in err


# ---- 6: tracebacks instead of exit 2 -------------------------------------------------------


_BAD_TEXT = {
    "deep.jsonl": '{"step":0,"loss":' + "[" * 100000 + "]" * 100000 + "}\n",
    "digits400.jsonl": '{"step":0,"loss":1' + "0" * 400 + "}\n",
    "digits5000.jsonl": '{"step":0,"loss":1' + "0" * 5000 + "}\n",
    "cr.csv": "step,loss\r0,1\r1,2\r",
    "crdata.csv": "step,loss\n0,1\r5,\n1,2\n",
    "step5000.jsonl": '{"step":1' + "0" * 5000 + ',"loss":1}\n',
    "stepbig.csv": "step,loss\n1" + "0" * 400 + ",1\n",
}


@pytest.mark.parametrize("name", sorted(_BAD_TEXT))
def test_bad_input_exits_2_with_the_file_named(tmp_path, capsys, name):
    src = tmp_path / name
    src.write_bytes(_BAD_TEXT[name].encode())
    code, _, err = _run(["analyze", src, "--out", tmp_path / "o", "-q"], capsys)
    assert code in (0, 1, 2)
    if code == 2:
        assert str(src) in err or src.name in err


def test_deep_nesting_in_tombstones_and_runs(tmp_path, capsys):
    deep = ('{"a":' * 100000 + "1" + "}" * 100000 + "\n").encode()
    t = tmp_path / "t.jsonl"
    t.write_bytes(deep)
    res = verify(t)
    assert not res.ok and res.line == 1
    for cmd in ("verify", "tombstones"):
        code, _, _ = _run([cmd, t], capsys)
        assert code == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(deep + b'{"step":1}\n')
    code, _, err = _run(["report", run], capsys)
    assert code == 2 and "line 1" in err


def test_lone_surrogate_in_tombstones(tmp_path, capsys):
    t = tmp_path / "t.jsonl"
    TombstoneLog(t).append("skip", policy="nan", scope={"step": 1}, evidence={})
    with open(t, "a") as f:
        f.write('{"event":"\\ud800","time":"x","policy":"p","scope":{},"evidence":{},'
                '"operator":"a","prev":null,"hash":"sha256:00"}\n')
    res = verify(t)  # never raises
    assert not res.ok and res.line == 2
    code, out, _ = _run(["verify", t], capsys)
    assert code == 1 and "line 2" in out
    code, out, _ = _run(["tombstones", t], capsys)
    assert code == 1


def test_urandom_as_csv_exits_2(tmp_path, capsys):
    src = tmp_path / "rand.csv"
    src.write_bytes(os.urandom(20000))
    code, _, err = _run(["analyze", "--format", "csv", src, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2 and str(src) in err


# ---- 7: hangs and unbounded memory ---------------------------------------------------------


def _fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(path)
    return path


def _in_thread(fn, timeout: float = 20.0):
    """fn() in a thread; a hang fails the test (with the FIFO opened to release it)."""
    box = {}

    def run():
        try:
            box["v"] = fn()
        except BaseException as e:
            box["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return t.is_alive(), box


@pytest.mark.parametrize("where", ["alone", "tensorboard", "mlflow"])
def test_fifo_input_is_refused_not_waited_on(tmp_path, capsys, where):
    if where == "alone":
        src = _fifo(tmp_path / "train.csv")
        fifo = src
    elif where == "tensorboard":
        src = tmp_path / "tb"
        src.mkdir()
        fifo = _fifo(src / "events.out.tfevents.1.host")
    else:
        src = tmp_path / "ml"
        (src / "metrics").mkdir(parents=True)
        fifo = _fifo(src / "metrics" / "loss")
    hung, box = _in_thread(lambda: main(["analyze", str(src), "--out", str(tmp_path / "o"), "-q"]))
    if hung:  # release the reader, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("analyze waited on a FIFO")
    assert box.get("v") == 2, box
    assert "not a regular file" in capsys.readouterr().err


def test_pipe_is_read_when_asked(tmp_path, capsys):
    fifo = _fifo(tmp_path / "pipe")
    text = _csv(tmp_path / "t.csv").read_text()

    def feed():
        with open(fifo, "w") as f:
            f.write(text)

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    code, out, err = _run(
        ["analyze", fifo, "--format", "csv", "--allow-special", "--out", tmp_path / "o"], capsys
    )
    th.join(5)
    assert code == 0, err
    assert "120 steps" in out


def test_a_line_longer_than_the_cap_is_an_error_not_a_memory_blowup(tmp_path, capsys):
    from anet_lite.readers import MAX_LINE

    src = tmp_path / "long.csv"
    with open(src, "w") as f:
        f.write("step,loss\n0,1\n")
        f.write("1," + "9" * (MAX_LINE + 10))  # no newline at all
    code, _, err = _run(["analyze", src, "--out", tmp_path / "o", "-q"], capsys)
    assert code == 2 and "line 3" in err and "longer than" in err
    j = tmp_path / "long.jsonl"
    j.write_text('{"step":0,"loss":1}\n{"step":1,"loss":"' + "9" * (MAX_LINE + 10))
    with pytest.raises(LogFormatError, match="longer than"):
        list(open_log(j))


def test_verify_and_tombstone_log_bound_a_line_without_newline(tmp_path, capsys):
    from anet_lite.records.tombstone import MAX_RECORD_BYTES

    t = tmp_path / "t.jsonl"
    TombstoneLog(t).append("skip", policy="nan", scope={"step": 1}, evidence={})
    with open(t, "ab") as f:
        f.write(b"x" * (MAX_RECORD_BYTES + 10))
    res = verify(t)
    assert not res.ok and res.line == 2 and "longer than" in res.reason
    with pytest.raises(ValueError, match="longer than"):
        TombstoneLog(t)


# ---- 9: symlinks are never followed --------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_planted_links_in_the_out_folder_are_not_followed(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "o"
    out.mkdir()
    os.symlink(victim, out / "report.html.tmp")
    os.symlink(tmp_path / "created-by-link.csv", out / "metrics.csv")  # dangling
    os.symlink(tmp_path / "created-by-link.json", out / "meta.json")  # dangling
    code, _, err = _run(["analyze", _csv(tmp_path / "t.csv"), "--out", out, "-q"], capsys)
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created-by-link.csv").exists()
    assert not (tmp_path / "created-by-link.json").exists()
    assert (out / "report.html").is_file() and not (out / "report.html").is_symlink()
    dest = tmp_path / "r.html"
    os.symlink(victim, tmp_path / "r.html.tmp")
    code, _, _ = _run(["report", out, "--out", dest], capsys)
    assert code == 0 and victim.read_text() == "precious\n" and dest.is_file()


# ---- 14: smaller items ---------------------------------------------------------------------


def test_map_to_a_missing_jsonl_key_exits_2(tmp_path, capsys):
    src = tmp_path / "m.jsonl"
    src.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(20)))
    code, _, err = _run(["analyze", src, "--map", "loss=nope", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "nope" in err


@pytest.mark.parametrize("cell", ["1_000", "2_0.5"])
def test_underscore_numbers_are_not_numbers(tmp_path, cell):
    src = tmp_path / "u.csv"
    rows = [f"{i},1.0" for i in range(600)] + [f"600,{cell}"]
    src.write_text("step,loss\n" + "\n".join(rows) + "\n")
    with pytest.raises(LogFormatError, match="line 602"):
        list(open_log(src))
    src.write_text("step,loss\n" + "1_0,1.0\n")
    with pytest.raises(LogFormatError, match="line 2"):
        list(open_log(src))


def test_rows_with_extra_cells_are_an_error(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("step,loss\n0,1\n1,2,3,4\n2,3\n")
    with pytest.raises(LogFormatError, match=r"line 3.*4 cells"):
        list(open_log(src))


def test_duplicate_keys_fail_verify(tmp_path):
    t = tmp_path / "t.jsonl"
    rec = TombstoneLog(t).append("skip", policy="nan", scope={"step": 1}, evidence={})
    line = t.read_text().rstrip("\n")
    t.write_text('{"event":"forget",' + line[1:] + "\n")  # the last "event" is hashed
    res = verify(t)
    assert not res.ok and res.line == 1 and "duplicate" in res.reason
    assert rec["event"] == "skip"


# ---- 8: torn lines after a crash -----------------------------------------------------------


def test_runlog_reopened_after_a_crash_starts_on_a_fresh_line(tmp_path, capsys):
    from anet_lite import Monitor
    from anet_lite.records.outputs import COLUMNS, RunLog

    run = tmp_path / "run"
    m = Monitor()
    snaps = [m.update(2.0 - i * 1e-3, step=i) for i in range(40)]
    paths = (run / "metrics.csv", run / "metrics.jsonl")
    with RunLog(*paths) as log:
        for s in snaps[:20]:
            log.write(s)
    for p in paths:  # kill -9 mid-write: half of a line, no newline
        last = p.read_bytes().splitlines(keepends=True)[-1]
        with open(p, "ab") as f:
            f.write(last[: len(last) // 2])
    with RunLog(*paths) as log:
        for s in snaps[20:]:
            log.write(s)
    rows = paths[0].read_text().splitlines()
    assert len(rows) == 41 and all(len(r.split(",")) == len(COLUMNS) for r in rows)
    assert [json.loads(x)["step"] for x in paths[1].read_text().splitlines()] == list(range(40))
    code, _, err = _run(["report", run], capsys)
    assert code == 0, err


def _failing_write(monkeypatch, tomb_mod):
    """os.write that writes half of the data, then fails as a full disk does."""
    import errno

    def half_then_enospc(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tomb_mod, "_write_all", half_then_enospc)


def test_failed_tombstone_append_leaves_no_partial_line(tmp_path, monkeypatch):
    from anet_lite.records import tombstone as tomb_mod

    t = tmp_path / "t.jsonl"
    log = TombstoneLog(t)
    log.append("skip", policy="nan", scope={"step": 1}, evidence={})
    before = t.read_bytes()
    with monkeypatch.context() as mp:
        _failing_write(mp, tomb_mod)
        with pytest.raises(OSError):
            log.append("rollback", policy="nan", scope={"step": 2}, evidence={})
    assert t.read_bytes() == before
    log.append("stop", policy="nan", scope={"step": 3}, evidence={})
    res = verify(t)
    assert res.ok and res.records == 2 and res.skipped == ()


def _tmpfs(path: Path, size: str = "256k") -> Path:
    """A small tmpfs at ``path`` (root and a kernel that allows it), else skip."""
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace')[:100]}")
    return path


def test_full_disk_tmpfs_tombstones_and_analyze(tmp_path, capsys):
    import subprocess

    disk = _tmpfs(tmp_path / "disk")
    try:
        t = disk / "t.jsonl"
        log = TombstoneLog(t)
        written, failed = 0, 0
        big = {"note": "x" * 2000}
        for i in range(400):  # the disk fills up part way
            try:
                log.append("skip", policy="nan", scope={"step": i}, evidence=big)
                written += 1
            except OSError:
                failed += 1
            if failed > 5:
                break
        assert failed and written
        res = verify(t, head_file=False)
        assert res.ok and res.records == written, res.reason
        code, _, err = _run(["analyze", _csv(tmp_path / "t.csv", 5000), "--out", disk / "o"],
                            capsys)
        assert code == 2 and "No space left" in err
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ---- 10: the chain's head and identity are recorded and checked ------------------------------


def test_head_file_catches_a_cut_tail_and_another_runs_log(tmp_path, capsys):
    a, b = tmp_path / "a" / "tombstones.jsonl", tmp_path / "b" / "tombstones.jsonl"
    for p in (a, b):
        log = TombstoneLog(p, key="k")
        for i in range(3):
            log.append("skip", policy="nan", scope={"step": i}, evidence={"run": p.parent.name})
    assert verify(a, key="k").ok
    full = a.read_bytes()
    a.write_bytes(b"".join(full.splitlines(keepends=True)[:2]))  # the last record cut off
    res = verify(a, key="k")
    assert not res.ok and "head mismatch" in res.reason
    a.write_bytes(b.read_bytes())  # run b's log (same key) put in place of run a's
    res = verify(a, key="k")
    assert not res.ok and "chain identity" in res.reason and res.line == 1
    a.write_bytes(full)
    assert verify(a, key="k").ok


def test_report_checks_the_recorded_head(tmp_path, capsys):
    out = _analyzed(tmp_path, capsys)
    t = out / "tombstones.jsonl"
    TombstoneLog(t).append("stop", policy="nan", scope={"step": 5}, evidence={})
    _run(["report", out], capsys)
    assert "Chain verified: 1 record, intact" in (out / "report.html").read_text()
    t.write_bytes(b"")  # the only record deleted
    _run(["report", out], capsys)
    page = (out / "report.html").read_text()
    assert "Chain verified" not in page and "head mismatch" in page
    # no head file, but meta.json recorded the head (as the demo and analyze do)
    os.unlink(t.with_name(t.name + ".head"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tombstones"] is None  # analyze saw no tombstones.jsonl
    TombstoneLog(t).append("stop", policy="nan", scope={"step": 5}, evidence={})
    rec2 = TombstoneLog(t).append("stop", policy="nan", scope={"step": 6}, evidence={})
    meta["tombstones"] = {"ok": True, "records": 2, "head": rec2["hash"]}
    (out / "meta.json").write_text(json.dumps(meta))
    os.unlink(t.with_name(t.name + ".head"))
    t.write_bytes(t.read_bytes().splitlines(keepends=True)[0])
    _run(["report", out], capsys)
    page = (out / "report.html").read_text()
    assert "Chain verified" not in page and "head mismatch" in page


def test_analyze_records_the_head_of_a_tombstone_log_in_its_run_folder(tmp_path, capsys):
    out = tmp_path / "o"
    log = TombstoneLog(out / "tombstones.jsonl")
    rec = log.append("stop", policy="nan", scope={"step": 5}, evidence={})
    code, _, _ = _run(["analyze", _csv(tmp_path / "t.csv"), "--out", out, "-q"], capsys)
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tombstones"] == {
        "ok": True, "records": 1, "head": rec["hash"], "chain": rec["hash"]
    }


def test_atomic_writes_keep_the_usual_file_mode(tmp_path):
    from anet_lite.records.outputs import write_atomic

    old = os.umask(0o022)
    try:
        p = write_atomic(tmp_path / "meta.json", "{}\n")
    finally:
        os.umask(old)
    assert p.read_text() == "{}\n"
    if os.name == "posix":
        assert p.stat().st_mode & 0o777 == 0o644
    assert [q.name for q in tmp_path.iterdir()] == ["meta.json"]  # no temporary file left


def test_report_series_buffer_stays_bounded_on_a_long_run():
    """The min/max decimator buffers a constant number of raw rows, however long the run
    (not 512 buckets' worth: a sixth of all rows at the worst moment)."""
    import numpy as np

    from anet_lite.report.data import _Decimator

    dec = _Decimator(6)
    most = 0
    rng = np.random.default_rng(0)
    n, chunk = 3_000_000, 100_000
    for lo in range(0, n, chunk):
        block = rng.standard_normal((chunk, 6))
        block[:, 0] = np.arange(lo, lo + chunk)
        if lo == 2_000_000:
            block[12_345, 1] = 1e9  # a spike survives decimation
        dec.push_block(block)
        most = max(most, len(dec.pending))
    x, _, hi = dec.result()
    assert most <= 6 * 8192
    assert len(x) <= 2 * 1500 + 1 and x[0] == 0 and np.all(np.diff(x) > 0)
    assert hi[:, 0].max() == 1e9
