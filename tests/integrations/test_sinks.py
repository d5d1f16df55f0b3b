"""Sinks: a Monitor's snapshots written to TensorBoard / W&B / MLflow and read back with
each tool's own reader. Each backend test skips when its backend is not installed."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import repo_paths

from anet_lite import Monitor
from anet_lite.integrations import STATUS_CODES, MultiSink, Sink, snapshot_metrics

ROOT = repo_paths.ROOT
N = 151  # steps 0..150: warm-up, healthy, a precursor from ~122, NaN (collapsed) at 150


def feed(run_log):
    """A synthetic run through a real Monitor: decaying loss, then a blow-up, then NaN."""
    rng = random.Random(0)
    m = Monitor(run_log=run_log)
    snaps = []
    for i in range(N - 1):
        if i < 120:
            loss, g = 2.0 * math.exp(-i / 200) + 0.02 * rng.random(), 1.0 + 0.1 * rng.random()
        else:
            loss, g = 2.0 + (i - 120) * 0.5 * rng.random(), 10.0 * (i - 119)
        snaps.append(m.update(loss, step=i, grad_norm=g, lr=1e-3))
    snaps.append(m.update(float("nan"), step=N - 1))
    assert snaps[-1].status == "collapsed" and any(s.status == "precursor" for s in snaps)
    return snaps


class Recorder(Sink):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.logged, self.alerts, self.closed = [], [], False

    def _log(self, step, metrics):
        self.logged.append((step, metrics))

    def _alert(self, step, snap, text):
        self.alerts.append((step, text))

    def _close(self):
        self.closed = True


def test_import_is_cheap_and_lazy():
    code = (
        "import sys, anet_lite.integrations as i; "
        "print([m for m in ('torch', 'tensorboard', 'wandb', 'mlflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_metric_names_and_status_codes():
    snaps = feed(None)
    m = snapshot_metrics(snaps[100])
    for k in ("theta", "f_total", "sdot", "proc", "zscore", "alert", "status_code"):
        assert f"anet/{k}" in m
    assert m["anet/grad_ratio"] == snaps[100].evidence["grad_ratio"]
    assert m["anet/status_code"] == STATUS_CODES[snaps[100].status]
    last = snapshot_metrics(snaps[-1])
    assert last["anet/status_code"] == 4 and last["anet/alert"] == 1.0
    assert "anet/cause" not in last  # strings are not scalars
    from anet_lite.verdict import STATUSES

    # every status has a code, in order of severity; "recovering" (1.5) sits between
    # healthy and drifting so that the earlier codes stay what dashboards already plot
    assert tuple(STATUS_CODES) == STATUSES
    codes = list(STATUS_CODES.values())
    assert codes == sorted(codes) and STATUS_CODES["recovering"] == 1.5


def test_base_sink_writes_each_step_and_alert_text_once_per_episode():
    rec = Recorder()
    snaps = feed(rec)
    rec.close()
    assert [s for s, _ in rec.logged] == list(range(N)) and rec.closed
    alert_steps = [s.step for s in snaps if s.alert]
    assert rec.alerts[0][0] == alert_steps[0] and len(rec.alerts) < len(alert_steps)
    assert rec.alerts[-1][0] == N - 1 and "collapsed" in rec.alerts[-1][1]
    assert snaps[-1].explain() in rec.alerts[-1][1]


def test_every_n_steps_keeps_alerts_and_status_changes():
    rec = Recorder(every=25)
    snaps = feed(rec)
    steps = {s for s, _ in rec.logged}
    assert {0, 25, 50, 75, 100, 125, 150} <= steps and len(steps) < N
    assert {s.step for s in snaps if s.alert} <= steps
    changes = [b.step for a, b in zip(snaps, snaps[1:]) if a.status != b.status]
    assert set(changes) <= steps
    with pytest.raises(ValueError):
        Recorder(every=0)


def test_write_never_raises_and_warns_once():
    class Broken(Recorder):
        def _log(self, step, metrics):
            raise OSError("disk full")

    sink = Broken()
    with pytest.warns(RuntimeWarning, match="disk full") as rec:
        snaps = feed(sink)
    assert len([w for w in rec if "Broken" in str(w.message)]) == 1
    assert snaps[-1].status == "collapsed"  # the Monitor's own verdicts are untouched
    with pytest.raises(OSError):
        Broken(on_error="raise").write(snaps[0])


def test_missing_backend_names_the_extra(monkeypatch, tmp_path):
    from anet_lite.integrations import MLflowSink, TensorBoardSink, WandbSink

    cases = (
        ("wandb", lambda: WandbSink(dir=tmp_path)),
        ("mlflow", lambda: MLflowSink(str(tmp_path))),
        ("tensorboard", lambda: TensorBoardSink(tmp_path)),
    )
    for mod, make in cases:
        for name in [m for m in sys.modules if m == mod or m.startswith(mod + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, mod, None)  # import -> ImportError
        with pytest.raises(ImportError, match=rf"anet-lite\[{mod}\]"):
            make().start()
        with pytest.warns(RuntimeWarning, match=rf"anet-lite\[{mod}\]") as rec:
            feed(make())  # lazy start from write: warned once, training goes on
        assert len(rec) == 1


def test_rank_zero_only(monkeypatch):
    fake = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, get_rank=lambda: 1
    )
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)
    rec, every = Recorder(), Recorder(rank_zero_only=False)
    feed(MultiSink([rec, every]))
    assert rec.logged == [] and len(every.logged) == N


def test_multisink_isolates_a_failing_sink():
    class Raising:
        def write(self, snap):
            raise ValueError("nope")

        def close(self):
            pass

    rec = Recorder()
    multi = MultiSink([Raising(), rec])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feed(multi)
    multi.close()
    assert len(rec.logged) == N and rec.closed


# ---- TensorBoard ---------------------------------------------------------------------------


def _tb_read(log_dir):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_roundtrip(tmp_path):
    pytest.importorskip("tensorboard")
    from anet_lite.integrations import TensorBoardSink

    with TensorBoardSink(tmp_path / "tb") as sink:
        snaps = feed(sink)
    acc = _tb_read(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    for t in ("anet/theta", "anet/f_total", "anet/status_code", "anet/alert", "anet/grad_ratio"):
        assert t in tags
    theta = acc.Scalars("anet/theta")
    assert [e.step for e in theta] == list(range(N))
    assert theta[100].value == pytest.approx(snaps[100].theta, rel=1e-6)
    assert acc.Scalars("anet/status_code")[-1].value == 4
    texts = acc.Tensors("anet/alert_text")
    assert texts and texts[-1].step == N - 1
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert snaps[-1].explain() in last


def test_tensorboard_into_a_torch_summary_writer(tmp_path):
    pytest.importorskip("tensorboard")
    tb = pytest.importorskip("torch.utils.tensorboard")
    from anet_lite.integrations import TensorBoardSink

    writer = tb.SummaryWriter(str(tmp_path / "tb"))
    with TensorBoardSink(writer=writer) as sink:
        feed(sink)
    writer.close()
    acc = _tb_read(tmp_path / "tb")
    assert len(acc.Scalars("anet/theta")) == N
    assert any(
        t.startswith("anet/alert_text") for t in acc.Tags()["tensors"]
    )  # torch: /text_summary


def test_example_runs(tmp_path):
    pytest.importorskip("tensorboard")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sinks.py"), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert len(_tb_read(tmp_path / "runs").Scalars("anet/theta")) > 50


# ---- MLflow --------------------------------------------------------------------------------


def test_mlflow_roundtrip(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from anet_lite.integrations import MLflowSink

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x local folder store
    uri = (tmp_path / "mlruns").as_uri()
    with MLflowSink(uri, experiment="anet-test", run_name="r1") as sink:
        snaps = feed(sink)
    client = MlflowClient(tracking_uri=uri)
    hist = client.get_metric_history(sink.run_id, "anet/theta")
    assert sorted(m.step for m in hist) == list(range(N))
    by_step = {m.step: m.value for m in hist}
    assert by_step[100] == pytest.approx(snaps[100].theta)
    codes = {m.step: m.value for m in client.get_metric_history(sink.run_id, "anet/status_code")}
    assert codes[N - 1] == 4
    assert client.get_metric_history(sink.run_id, "anet/grad_ratio")
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.tags["anet.last_alert_step"] == str(N - 1)
    assert snaps[-1].explain() in run.data.tags["anet.last_alert"]
    assert "anet.first_alert_step" in run.data.tags


# ---- Weights & Biases (offline) ------------------------------------------------------------


def _wandb_records(path):
    """Parse a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks, 7-byte record
    headers crc32/len/type, after a 7-byte ':W&B' header) into wandb's own ``Record`` protos.

    wandb 0.31 ships no offline Python reader (``wandb.sdk.internal.datastore`` is gone);
    the protobuf schema ``wandb.proto.wandb_internal_pb2.Record`` is what it writes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _item_key(it):
    return it.key or "/".join(it.nested_key)


def test_wandb_offline_roundtrip(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from anet_lite.integrations import WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with WandbSink(project="anet-test", dir=tmp_path, name="r1") as sink:
        snaps = feed(sink)
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    recs = _wandb_records(files[0])
    theta, codes, summary = {}, {}, {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {_item_key(it): it.value_json for it in r.history.item}
            if "anet/theta" in row:
                step = int(json.loads(row["anet/step"]))
                theta[step] = json.loads(row["anet/theta"])
                codes[step] = json.loads(row["anet/status_code"])
        elif r.WhichOneof("record_type") == "summary":
            for it in r.summary.update:
                summary[_item_key(it)] = json.loads(it.value_json)
    assert sorted(theta) == list(range(N))
    assert theta[100] == pytest.approx(snaps[100].theta)
    assert codes[N - 1] == 4
    assert summary["anet/last_alert_step"] == N - 1
    assert snaps[-1].explain() in summary["anet/last_alert"]
    (table,) = files[0].parent.glob("files/media/table/anet/alerts_*.table.json")
    table = json.loads(table.read_text())  # W&B's own table format: columns + data
    assert table["columns"] == ["step", "status", "cause", "explanation"]
    assert table["data"][-1][:3] == [N - 1, "collapsed", "non_finite"]


def test_mlflow_logs_into_the_active_run_and_leaves_it_open(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from anet_lite.integrations import MLflowSink

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with mlflow.start_run() as run:
        sink = MLflowSink(every=10)
        feed(sink)
        sink.close()
        client = mlflow.MlflowClient()
        assert sink.run_id == run.info.run_id
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        assert len(client.get_metric_history(run.info.run_id, "anet/theta")) < N


def test_wandb_logs_into_the_users_run_and_leaves_it_open(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from anet_lite.integrations import WandbSink

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="anet-test", mode="offline", dir=str(tmp_path))
    try:
        sink = WandbSink()
        feed(sink)
        sink.close()
        assert sink.run is run and wandb.run is run  # not finished by the sink
        assert run.summary["anet/last_alert_step"] == N - 1
    finally:
        run.finish()


@pytest.mark.parametrize("backend", ["tensorboard", "wandb", "mlflow"])
def test_docs_examples_run(tmp_path, backend):
    pytest.importorskip(backend)
    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    blocks = [b for b in text.split("```python\n")[1:] if "import math" in b]
    (code,) = [b.split("```")[0] for b in blocks if f"pip install 'anet-lite[{backend}]'" in b]
    env = dict(os.environ, WANDB_SILENT="true", WANDB_MODE="offline")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(tmp_path.rglob("*")), "the example wrote nothing"


_DDP = """
import math, sys
import torch.distributed as dist
from anet_lite import Monitor
from anet_lite.integrations import TensorBoardSink
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
with TensorBoardSink(f"{out}/rank{rank}") as sink:  # the same code runs on every rank
    m = Monitor(run_log=sink)
    for i in range(100):
        m.update(1.0 + 0.01 * math.sin(i), step=i)
    print(sink.active)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.torch
def test_rank_zero_only_under_real_torch_distributed(tmp_path):
    pytest.importorskip("tensorboard")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    init = (tmp_path / "rendezvous").as_uri()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP, str(r), init, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["True", "False"]
    assert len(_tb_read(tmp_path / "rank0").Scalars("anet/theta")) == 100
    assert not (tmp_path / "rank1").exists()
