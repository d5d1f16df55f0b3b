"""Tests for anet_lite.records.tombstone: the hash-chained, append-only tombstone log."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import multiprocessing
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anet_lite.records.tombstone import KEY_ENV, TombstoneLog, VerifyResult, read, verify

SEED_FIELDS = ["event", "time", "policy", "scope", "evidence", "operator"]
EVIDENCE = {"theta": 0.42, "f_total": -0.8, "precursor_z": 3.1}
SCOPE = {"layers": ["L12", "L13"], "datasets": ["foo"]}
HEX64 = "[0-9a-f]{64}"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def _log(path, n=5, key=None):
    log = TombstoneLog(path, key=key)
    recs = [
        log.append("forget", policy="ttl", scope=SCOPE, evidence={**EVIDENCE, "i": i})
        for i in range(n)
    ]
    return log, recs


def _lines(path):
    return Path(path).read_bytes().splitlines(keepends=True)


def _write_lines(path, lines):
    Path(path).write_bytes(b"".join(lines))


def _canonical(rec):
    body = {k: v for k, v in rec.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _strict_loads(raw):
    def bad(name):
        raise ValueError(name)

    return json.loads(raw, parse_constant=bad)


# --- format -------------------------------------------------------------------------------


def test_record_has_exactly_seed_fields_plus_prev(tmp_path):
    path = tmp_path / "deep" / "dir" / "tomb.jsonl"  # parent dirs are created
    log, recs = _log(path, n=2)
    assert log.path == path
    on_disk = read(path)
    assert on_disk == recs
    for rec in on_disk:
        assert list(rec) == [*SEED_FIELDS, "prev", "hash"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["time"])
        assert re.fullmatch("sha256:" + HEX64, rec["hash"])
        assert rec["operator"] == "auto"
        assert rec["scope"] == SCOPE
    assert recs[0]["prev"] is None
    assert recs[1]["prev"] == recs[0]["hash"]
    assert log.head == recs[1]["hash"]
    assert all(line.endswith(b"\n") for line in _lines(path))


def test_hash_is_sha256_of_canonical_json(tmp_path):
    _log(tmp_path / "t.jsonl", n=2)
    for rec in read(tmp_path / "t.jsonl"):
        assert rec["hash"] == "sha256:" + hashlib.sha256(_canonical(rec)).hexdigest()


def test_empty_log_head_is_none_and_reopen_continues_chain(tmp_path):
    path = tmp_path / "t.jsonl"
    assert TombstoneLog(path).head is None
    _, recs = _log(path, n=3)
    again = TombstoneLog(path)
    assert again.head == recs[-1]["hash"]
    rec = again.append("rollback", policy="drift", scope={}, evidence={}, operator="alice")
    assert rec["prev"] == recs[-1]["hash"]
    assert verify(path).records == 4


def test_record_larger_than_tail_block_still_chains(tmp_path):
    path = tmp_path / "t.jsonl"
    log = TombstoneLog(path)
    big = log.append("skip", policy="ttl", scope={}, evidence={"blob": "x" * 50_000})
    rec = TombstoneLog(path).append("stop", policy="ttl", scope={}, evidence={})
    assert rec["prev"] == big["hash"]
    assert verify(path).ok


# --- verify ---------------------------------------------------------------------------------


def test_verify_fresh_chain_ok(tmp_path):
    log, recs = _log(tmp_path / "t.jsonl")
    res = verify(tmp_path / "t.jsonl", head=log.head)
    assert isinstance(res, VerifyResult)
    assert res.ok and bool(res)
    assert res.line is None
    assert res.records == 5
    assert res.head == recs[-1]["hash"] == log.head


def test_edit_field_in_line_2_is_reported_at_line_2(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path)
    lines = _lines(path)
    rec = json.loads(lines[1])
    rec["evidence"]["theta"] = 0.99
    lines[1] = json.dumps(rec).encode() + b"\n"
    _write_lines(path, lines)
    res = verify(path)
    assert not res.ok
    assert res.line == 2
    assert res.records == 1
    assert "line 2" in res.reason and "hash mismatch" in res.reason


def test_deleting_middle_record_is_reported_at_following_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path)
    lines = _lines(path)
    del lines[2]  # record 3 gone; record 4 is now on line 3
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.line, res.records) == (False, 3, 2)
    assert "prev does not match line 2" in res.reason


def test_deleting_first_record_is_detected(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path)
    _write_lines(path, _lines(path)[1:])
    res = verify(path)
    assert (res.ok, res.line) == (False, 1)
    assert "prev" in res.reason


def test_swapping_two_records_is_detected(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.line) == (False, 2)
    assert "reordered" in res.reason


def test_rehashed_edited_record_is_caught_at_the_next_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path)
    lines = _lines(path)
    rec = json.loads(lines[1])
    rec["event"] = "skip"
    rec["hash"] = "sha256:" + hashlib.sha256(_canonical(rec)).hexdigest()  # consistent by itself
    lines[1] = json.dumps(rec).encode() + b"\n"
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.line, res.records) == (False, 3, 2)
    assert "line 3: prev does not match line 2's hash" in res.reason


def test_truncated_tail_is_detected_only_with_head(tmp_path):
    path = tmp_path / "t.jsonl"
    log, recs = _log(path)
    _write_lines(path, _lines(path)[:-1])
    assert verify(path, head_file=False).ok  # undetectable without a head
    res = verify(path)  # the head file the log keeps beside it catches it
    assert not res.ok and "head mismatch" in res.reason and res.records == 4
    res = verify(path, head=log.head)
    assert not res.ok
    assert res.records == 4 and res.head == recs[-2]["hash"]
    assert res.reason.startswith("head mismatch") and log.head in res.reason


def test_head_taken_before_later_appends_still_verifies(tmp_path):
    path = tmp_path / "t.jsonl"
    log, _ = _log(path, n=2)
    old_head = log.head
    log.append("stop", policy="ttl", scope={}, evidence={})
    assert verify(path, head=old_head).ok
    assert not verify(path, head="sha256:" + "0" * 64).ok


def test_missing_file_and_empty_file(tmp_path):
    res = verify(tmp_path / "nope.jsonl")
    assert not res.ok and "not found" in res.reason and res.records == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    res = verify(empty)
    assert res.ok and res.records == 0 and res.head is None
    res = verify(empty, head="sha256:" + "0" * 64)
    assert not res.ok and "head mismatch" in res.reason


def test_missing_field_and_non_object(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path, n=2)
    lines = _lines(path)
    rec = json.loads(lines[1])
    del rec["scope"]
    _write_lines(path, [lines[0], json.dumps(rec).encode() + b"\n"])
    res = verify(path)
    assert (res.line, res.records) == (2, 1) and "missing field 'scope'" in res.reason
    _write_lines(path, [lines[0], b"[1, 2]\n"])
    assert "not a JSON object" in verify(path).reason


def test_read_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path, n=2)
    with path.open("ab") as f:
        f.write(b"{oops\n")
    with pytest.raises(ValueError, match=r"t\.jsonl: line 3"):
        read(path)


# --- HMAC -----------------------------------------------------------------------------------


def test_keyed_log_verifies_only_with_the_key(tmp_path):
    path = tmp_path / "t.jsonl"
    log, recs = _log(path, key="s3cret")
    for rec in recs:
        assert re.fullmatch("hmac-sha256:" + HEX64, rec["hash"])
        want = hmac.new(b"s3cret", _canonical(rec), hashlib.sha256).hexdigest()
        assert rec["hash"] == "hmac-sha256:" + want
    assert verify(path, key="s3cret").ok
    assert verify(path, key=b"s3cret", head=log.head).ok
    missing = verify(path)
    assert (missing.ok, missing.line) == (False, 1) and "key" in missing.reason
    wrong = verify(path, key="guess")
    assert (wrong.ok, wrong.line) == (False, 1) and "HMAC mismatch" in wrong.reason


def test_chain_forged_without_the_key_fails(tmp_path):
    path = tmp_path / "t.jsonl"
    _log(path, key="s3cret")
    forged = tmp_path / "forged.jsonl"
    # The attacker rewrites history with plain SHA-256 (consistent chain, no key needed) ...
    _log(forged, n=5)
    assert verify(forged).ok
    res = verify(forged, key="s3cret")
    assert (res.ok, res.line) == (False, 1) and "unkeyed" in res.reason
    # ... or with an HMAC under a key of their own.
    _log(tmp_path / "forged2.jsonl", n=5, key="attacker")
    res = verify(tmp_path / "forged2.jsonl", key="s3cret")
    assert (res.ok, res.line) == (False, 1) and "HMAC mismatch" in res.reason


def test_opening_with_the_other_scheme_or_wrong_key_raises(tmp_path):
    keyed, plain = tmp_path / "k.jsonl", tmp_path / "p.jsonl"
    _log(keyed, n=1, key="s3cret")
    _log(plain, n=1)
    with pytest.raises(ValueError, match="keyed"):
        TombstoneLog(keyed)
    with pytest.raises(ValueError, match="unkeyed"):
        TombstoneLog(plain, key="s3cret")
    with pytest.raises(ValueError, match="does not verify with this key"):
        TombstoneLog(keyed, key="guess")


def test_env_var_key_is_used(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(KEY_ENV, "from-env")
    rec = TombstoneLog(path).append("forget", policy="ttl", scope={}, evidence={})
    assert rec["hash"].startswith("hmac-sha256:")
    assert verify(path).ok
    assert verify(path, key="from-env").ok
    monkeypatch.delenv(KEY_ENV)
    assert not verify(path).ok
    assert verify(path, key=b"from-env").ok


# --- torn lines, non-finite numbers, bad arguments ----------------------------------------


def test_torn_last_line_then_append(tmp_path):
    path = tmp_path / "t.jsonl"
    _, recs = _log(path, n=3)
    whole = json.dumps({"event": "forget", "time": "2025-09-02T12:34:56Z"}).encode()
    with path.open("ab") as f:
        f.write(whole[: len(whole) // 2])  # crash mid-write: half a line, no newline
    res = verify(path)
    assert (res.ok, res.line, res.records) == (False, 4, 3)
    assert res.head == recs[-1]["hash"]
    assert "line 4: torn last line" in res.reason

    again = TombstoneLog(path)
    assert again.head == recs[-1]["hash"]
    rec = again.append("stop", policy="drift", scope={}, evidence={})
    assert rec["prev"] == recs[-1]["hash"]  # chains to the last intact record
    lines = _lines(path)
    assert len(lines) == 5 and all(line.endswith(b"\n") for line in lines)
    assert json.loads(lines[4]) == rec  # not glued onto the torn fragment
    res = verify(path)  # the torn line is now in the middle, and the chain continues over it
    assert (res.ok, res.records, res.skipped, res.head) == (True, 4, (4,), rec["hash"])
    assert "torn line 4 skipped" in res.reason
    with pytest.raises(ValueError, match="line 4"):
        read(path)


def test_non_finite_evidence_gives_valid_json(tmp_path):
    path = tmp_path / "t.jsonl"
    evidence = {
        "theta": float("nan"),
        "f_total": float("inf"),
        "precursor_z": float("-inf"),
        "np32": np.float32(1.5),
        "np_nan": np.float64("nan"),
        "flag": np.bool_(True),
        "arr": np.array([1.0, np.inf]),
        "n": np.int64(7),
    }
    rec = TombstoneLog(path).append("slow-down", policy="drift", scope={}, evidence=evidence)
    want = {
        "theta": "nan",
        "f_total": "inf",
        "precursor_z": "-inf",
        "np32": 1.5,
        "np_nan": "nan",
        "flag": True,
        "arr": [1.0, "inf"],
        "n": 7,
    }
    assert rec["evidence"] == want
    line = path.read_text(encoding="utf-8")
    assert "NaN" not in line and "Infinity" not in line
    assert _strict_loads(line)["evidence"] == want
    assert verify(path).ok


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"event": ""}, ValueError, "event"),
        ({"event": "   "}, ValueError, "event"),
        ({"event": None}, TypeError, "event"),
        ({"event": 3}, TypeError, "event"),
        ({"policy": ""}, ValueError, "policy"),
        ({"policy": b"ttl"}, TypeError, "policy"),
        ({"operator": ""}, ValueError, "operator"),
        ({"operator": None}, TypeError, "operator"),
        ({"scope": ["L12"]}, TypeError, "scope"),
        ({"scope": None}, TypeError, "scope"),
        ({"evidence": None}, TypeError, "evidence"),
        ({"evidence": [0.4]}, TypeError, "evidence"),
        ({"evidence": {1: 0.4}}, TypeError, "evidence"),
        ({"evidence": {"x": object()}}, TypeError, "evidence"),
        ({"scope": {"bad": "\ud800"}}, ValueError, "scope"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, exc, name):
    args = {"event": "forget", "policy": "ttl", "scope": {}, "evidence": {}, **kwargs}
    log = TombstoneLog(tmp_path / "t.jsonl")
    with pytest.raises(exc, match=name):
        log.append(args.pop("event"), **args)
    assert not (tmp_path / "t.jsonl").read_bytes()  # nothing written


def test_bad_key_type(tmp_path):
    with pytest.raises(TypeError, match="key"):
        TombstoneLog(tmp_path / "t.jsonl", key=123)
    with pytest.raises(ValueError, match="key"):
        TombstoneLog(tmp_path / "t.jsonl", key="")


# --- two processes ----------------------------------------------------------------------


def _append_worker(path, start, tag, n):
    start.wait(30)
    log = TombstoneLog(path)
    for i in range(n):
        log.append("skip", policy="ttl", scope={"proc": tag}, evidence={"i": i})


def test_two_processes_appending_concurrently(tmp_path):
    path = str(tmp_path / "t.jsonl")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_worker, args=(path, start, t, 50)) for t in "ab"]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = _lines(path)
    assert len(lines) == 100
    recs = [_strict_loads(line) for line in lines]
    assert sorted(r["scope"]["proc"] for r in recs) == ["a"] * 50 + ["b"] * 50
    for tag in "ab":  # each writer's own records stay in order
        assert [r["evidence"]["i"] for r in recs if r["scope"]["proc"] == tag] == list(range(50))
    res = verify(path)
    assert res.ok and res.records == 100, res.reason


# --- property -------------------------------------------------------------------------------

_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)


def _expected(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


@settings(max_examples=60, deadline=None)
@given(evidence=st.dictionaries(st.text(max_size=10), _scalars, max_size=8))
def test_random_evidence_round_trips_and_verifies(evidence):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.jsonl"
        log = TombstoneLog(path)
        log.append("forget", policy="ttl", scope={}, evidence={"first": 1})
        rec = log.append("forget", policy="compliance", scope={"k": "v"}, evidence=evidence)
        assert rec["evidence"] == {k: _expected(v) for k, v in evidence.items()}
        assert read(path)[-1] == rec
        res = verify(path, head=log.head)
        assert res.ok and res.records == 2, res.reason
