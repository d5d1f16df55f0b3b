"""Streaming log readers: formats, aliases, gaps, errors naming file/line/column, laziness."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from pathlib import Path

import pytest

from anet_lite.readers import LogFormatError, detect_format, open_log, parse_mapping


def _write(p: Path, text: str) -> Path:
    p.write_text(text, encoding="utf-8")
    return p


def _all(path, **kw):
    log = open_log(path, **kw)
    return log, list(log)


def test_csv_basic_columns_and_values(tmp_path):
    p = _write(
        tmp_path / "a.csv",
        "step,loss,grad_norm,update_norm,noise,learning_rate,time\n"
        "0,2.0,1.0,0.01,0.5,0.001,0.0\n"
        "1,1.9,1.1,0.02,0.6,0.001,0.5\n",
    )
    log, recs = _all(p)
    assert log.format == "csv"
    assert log.columns == {
        "step": "step",
        "loss": "loss",
        "grad_norm": "grad_norm",
        "step_norm": "update_norm",
        "noise": "noise",
        "lr": "learning_rate",
        "time": "time",
    }
    assert recs[1] == (1, 1.9, 1.1, 0.02, 0.6, 0.001, 0.5, None, None)  # no param_norm, ...


@pytest.mark.parametrize(
    "name",
    [
        "param_norm",
        "params_norm",
        "parameter_norm",
        "weight_norm",
        "train/param_norm",
        "train_param_norm",
        "Param_Norm",
        "metrics.param_norm",
    ],
)
def test_param_norm_aliases(tmp_path, name):
    p = _write(
        tmp_path / "p.csv",
        f"step,loss,update_norm,param_update_norm,{name}\n0,2.0,0.5,9,50.0\n1,1.9,15.0,9,50.5\n",
    )
    log, recs = _all(p)
    assert log.columns["param_norm"] == name
    assert log.columns["step_norm"] == "update_norm"  # not param_update_norm, not param_norm
    assert [(r.step_norm, r.param_norm) for r in recs] == [(0.5, 50.0), (15.0, 50.5)]


def _assert_mapped_and_bad_cell(tmp_path, field, alias, cells, second, bad_csv, line, column):
    """``--map field=alias`` reads the aliased column; a non-numeric ``field`` cell in
    ``bad_csv`` raises an error naming the file, line and column."""
    assert parse_mapping([f"{field}={alias}"]) == {field: alias}
    rows = "".join(f"{i},{2.0 - 0.1 * i},{c}\n" for i, c in enumerate(cells))
    p = _write(tmp_path / "m.csv", f"step,loss,{alias}\n{rows}")
    log, recs = _all(p, mapping={field: alias})
    assert log.columns[field] == alias and getattr(recs[1], field) == second
    p = _write(tmp_path / "bad.csv", bad_csv)
    with pytest.raises(LogFormatError, match="not a number") as ei:
        list(open_log(p))
    e = ei.value
    assert e.file == str(p) and e.line == line and e.column == column and e.column_name == field
    assert f"line {line}, column {column} ('{field}')" in str(e)


def test_param_norm_absent_gaps_mapping_and_errors(tmp_path):
    p = _write(tmp_path / "a.csv", "step,loss,update_norm\n0,2.0,0.5\n1,1.9,0.6\n")
    log, recs = _all(p)
    assert "param_norm" not in log.columns and [r.param_norm for r in recs] == [None, None]
    p = _write(tmp_path / "g.csv", "step,loss,param_norm\n0,2.0,50\n1,1.9,\n2,1.8,NA\n3,1.7,inf\n")
    log, recs = _all(p)
    assert [r.param_norm for r in recs[:3]] == [50.0, None, None] and recs[3].param_norm == math.inf
    assert log.stats.empty_cells == {"param_norm": 2}
    assert log.stats.non_finite == {"param_norm": 1}
    bad = "step,loss,param_norm\n0,2.0,50\n1,1.9,huge\n"
    _assert_mapped_and_bad_cell(tmp_path, "param_norm", "wn", ("50", "51"), 51.0, bad, 3, 3)


def _assert_nested_jsonl_field(tmp_path, field, lines, first, values):
    """``field`` under "train/" in JSONL lines (a step split over two lines merges; one
    null cell counts as empty)."""
    p = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    log, recs = _all(p)
    assert log.columns[field] == f"train/{field}"
    assert recs[0] == first
    assert [getattr(r, field) for r in recs] == values
    assert log.stats.empty_cells == {field: 1}


def test_param_norm_jsonl(tmp_path):
    lines = [
        {"step": 1, "train": {"loss": 2.0, "param_norm": 50.0}, "update_norm": 0.5},
        {"step": 2, "train": {"loss": 1.9}},
        {"step": 2, "train": {"param_norm": "51.5"}},
        {"step": 3, "train": {"loss": 1.8, "param_norm": None}},
    ]
    first = (1, 2.0, None, 0.5, None, None, None, 50.0, None)
    _assert_nested_jsonl_field(tmp_path, "param_norm", lines, first, [50.0, 51.5, None])
    p2 = _write(tmp_path / "bad.jsonl", '{"step": 1, "loss": 2, "weight_norm": "big"}\n')
    with pytest.raises(LogFormatError, match="not a number") as ei:
        list(open_log(p2))
    assert ei.value.line == 1 and ei.value.column_name == "weight_norm"
    assert str(p2) in str(ei.value)


@pytest.mark.parametrize(
    "field, wandb_col, mlflow_other, run_name, values",
    [
        ("param_norm", "train/param_norm", "update_norm", "weight_norm", [50.0, 50.25]),
        ("processivity", "train/processivity", "param_norm", "update_cos", [0.5, -0.25]),
    ],
)
def test_optional_fields_in_wandb_and_mlflow(
    tmp_path, field, wandb_col, mlflow_other, run_name, values
):
    p = _write(
        tmp_path / "wandb_export.csv",
        f'Step,"run-7 - train/loss","run-7 - {wandb_col}"\n1,2.0,{values[0]}\n2,1.8,{values[1]}\n',
    )
    log, recs = _all(p)
    assert log.format == "wandb" and log.columns[field] == f"run-7 - {wandb_col}"
    assert [getattr(r, field) for r in recs] == values
    t0 = 1700000000000
    rows = ["key,value,step,timestamp"]
    rows += [f"loss,{2.0 - 0.1 * s},{s},{t0 + 1000 * s}" for s in range(4)]
    rows += [f"{mlflow_other},0.5,{s},{t0 + 1000 * s}" for s in range(4)]
    rows += [f"{field},{0.25 * s},{s},{t0 + 1000 * s}" for s in range(0, 4, 2)]
    p = _write(tmp_path / "metric_history.csv", "\n".join(rows) + "\n")
    log, recs = _all(p)
    assert log.format == "mlflow" and log.columns[field] == field
    assert [getattr(r, field) for r in recs] == [0.0, None, 0.5, None]
    other = "step_norm" if mlflow_other == "update_norm" else mlflow_other
    assert getattr(recs[1], other) == 0.5 and recs[1].time is not None
    run = tmp_path / "mlruns" / "0" / "abc123"
    (run / "metrics" / "train").mkdir(parents=True)
    (run / "metrics" / "train" / "loss").write_text(
        "".join(f"{t0 + s} {2.0 - 0.01 * s} {s}\n" for s in range(5))
    )
    (run / "metrics" / run_name).write_text("".join(f"{t0 + s} {0.5 * s} {s}\n" for s in range(5)))
    log, recs = _all(run)
    assert log.columns[field] == run_name
    assert [getattr(r, field) for r in recs] == [0.0, 0.5, 1.0, 1.5, 2.0]
    (run / "metrics" / run_name).write_text(f"{t0} 0.5 0\n{t0 + 1} x 1\n")
    with pytest.raises(LogFormatError, match="not a number") as ei:
        list(open_log(run))
    e = ei.value
    assert e.file == str(run / "metrics" / run_name) and e.line == 2 and e.column == 2


def test_aliases_and_prefixes(tmp_path):
    p = _write(
        tmp_path / "b.csv",
        "global_step,train/loss,val/loss,gradient_norm,lr,train_time_ms\n"
        "10,3.0,9.0,2.0,0.1,1500\n"
        "20,2.5,9.0,2.0,0.1,2500\n",
    )
    log, recs = _all(p)
    assert log.columns["loss"] == "train/loss"  # never val/loss
    assert log.columns["grad_norm"] == "gradient_norm"
    assert [r.time for r in recs] == [1.5, 2.5]  # *_ms -> seconds
    assert [r.step for r in recs] == [10, 20]


def test_mapping_overrides_and_validation(tmp_path):
    p = _write(tmp_path / "c.csv", "it,objective,loss\n1,5.0,9.0\n2,4.0,9.0\n")
    log, recs = _all(p, mapping={"step": "it", "loss": "objective"})
    assert [r.loss for r in recs] == [5.0, 4.0]
    assert log.columns == {"step": "it", "loss": "objective"}
    assert parse_mapping(["update_norm=u", "lr = LR"]) == {"step_norm": "u", "lr": "LR"}
    with pytest.raises(ValueError, match="unknown field"):
        parse_mapping(["los=x"])
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_mapping(["loss"])
    with pytest.raises(LogFormatError, match="no such column") as ei:
        list(open_log(p, mapping={"loss": "nope"}))
    assert ei.value.line == 1 and ei.value.column_name == "nope"


def test_gaps_are_counted_and_nan_is_a_value(tmp_path):
    p = _write(
        tmp_path / "g.csv",
        "step,loss,grad_norm\n1,2.0,1.0\n2,,1.0\n3,2.0,\n6,2.0,null\n7,nan,1.0\n8,2.0,NaN\n",
    )
    log, recs = _all(p)
    assert [r.step for r in recs] == [1, 3, 6, 7, 8]
    assert recs[1].grad_norm is None
    assert math.isnan(recs[3].loss)  # a NaN loss is a collapse, not a gap
    st = log.stats
    assert st.rows_without_loss == 1
    assert st.missing_steps == 2 and st.step_jumps == 1  # 4 and 5
    assert st.empty_cells == {"grad_norm": 2}
    assert st.non_finite == {"loss": 1, "grad_norm": 1}
    assert "2 missing steps" in st.summary() and "1 rows without a loss" in st.summary()


def test_clock_restart_is_stitched(tmp_path):
    p = _write(tmp_path / "t.csv", "step,loss,time\n1,1,80\n2,1,81\n3,1,0.5\n4,1,1.0\n")
    log, recs = _all(p)
    assert [r.time for r in recs] == [80.0, 81.0, 81.0, 81.5]
    assert log.stats.time_resets == 1


def test_tsv(tmp_path):
    p = _write(tmp_path / "t.tsv", "step\tloss\n1\t2.0\n2\t1.5\n")
    _, recs = _all(p)
    assert [r.loss for r in recs] == [2.0, 1.5]


def test_jsonl_joins_lines_of_one_step_and_flattens(tmp_path):
    lines = [
        {"step": 1, "train": {"loss": 2.0}},
        {"step": 1, "grad_norm": 1.5},
        {"step": 2, "train": {"loss": 1.8}, "grad_norm": "nan"},
        {"step": 3, "val_loss": 3.0},
        {"step": 4, "train": {"loss": None}},
    ]
    p = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    log, recs = _all(p)
    assert log.format == "jsonl"
    assert recs[0] == (1, 2.0, 1.5, None, None, None, None, None, None)
    assert recs[1].step == 2 and math.isnan(recs[1].grad_norm)
    assert len(recs) == 2 and log.stats.rows_without_loss == 2


def test_jsonl_errors_name_line_and_column(tmp_path):
    p = _write(tmp_path / "bad.jsonl", '{"step": 1, "loss": 2}\n{"step": 2, "loss": }\n')
    with pytest.raises(LogFormatError) as ei:
        list(open_log(p))
    e = ei.value
    assert e.line == 2 and e.column == 21 and str(p) in str(e)
    p2 = _write(tmp_path / "bad2.jsonl", '{"step": 1, "loss": "abc"}\n')
    with pytest.raises(LogFormatError, match="not a number") as ei:
        list(open_log(p2))
    assert ei.value.line == 1 and ei.value.column_name == "loss"


def test_wandb_panel_export(tmp_path):
    p = _write(
        tmp_path / "wandb_export.csv",
        'Step,"run-7 - train/loss","run-7 - train/loss__MIN","run-7 - train/loss__MAX",'
        '"run-7 - train/grad_norm"\n'
        "1,2.0,1.9,2.1,0.5\n2,1.8,1.7,1.9,0.4\n3,,,,0.4\n",
    )
    log, recs = _all(p)
    assert log.format == "wandb"
    assert log.columns["loss"] == "run-7 - train/loss"
    assert log.columns["grad_norm"] == "run-7 - train/grad_norm"
    assert [r.loss for r in recs] == [2.0, 1.8]
    assert log.stats.rows_without_loss == 1


def test_wandb_history_export(tmp_path):
    p = _write(
        tmp_path / "history.csv",
        "_step,_runtime,_timestamp,train/loss,train/learning_rate\n"
        "0,1.5,1700000000.1,2.0,0.001\n1,2.5,1700000001.1,1.9,0.001\n",
    )
    log, recs = _all(p)
    assert log.format == "wandb"
    assert log.columns["time"] == "_runtime" and log.columns["lr"] == "train/learning_rate"
    assert recs[1] == (1, 1.9, None, None, None, 0.001, 2.5, None, None)


def test_mlflow_long_format_grouped_by_metric(tmp_path):
    rows = ["key,value,step,timestamp"]
    rows += [f"loss,{2.0 - 0.1 * s},{s},{1700000000000 + 1000 * s}" for s in range(5)]
    rows += [f"grad_norm,{1.0 + s},{s},{1700000000000 + 1000 * s}" for s in range(0, 5, 2)]
    rows += [f"lr,0.01,{s},{1700000000000 + 1000 * s}" for s in range(5)]
    p = _write(tmp_path / "metric_history.csv", "\n".join(rows) + "\n")
    log, recs = _all(p)
    assert log.format == "mlflow"
    assert [r.step for r in recs] == [0, 1, 2, 3, 4]
    assert [r.grad_norm for r in recs] == [1.0, None, 3.0, None, 5.0]
    assert recs[1].lr == 0.01
    assert recs[1].time - recs[0].time == pytest.approx(1.0)  # epoch ms -> s


def test_mlflow_long_format_steps_out_of_order_is_an_error(tmp_path):
    p = _write(tmp_path / "h.csv", "key,value,step,timestamp\nloss,1,5,0\nloss,1,3,0\n")
    with pytest.raises(LogFormatError, match="go back") as ei:
        list(open_log(p))
    assert ei.value.line == 3


def test_mlflow_single_metric_csv_and_wide_table(tmp_path):
    p = _write(tmp_path / "train_loss.csv", "step,timestamp,value\n0,1000,2.0\n1,2000,1.5\n")
    log, recs = _all(p)
    assert log.format == "mlflow" and [r.loss for r in recs] == [2.0, 1.5]
    w = _write(tmp_path / "wide.csv", "step,metrics.loss,metrics.lr\n0,2.0,0.1\n1,1.0,0.1\n")
    log, recs = _all(w)
    assert log.format == "mlflow" and log.columns["loss"] == "metrics.loss"
    assert recs[1].lr == 0.1


def test_mlflow_file_store_run_folder(tmp_path):
    run = tmp_path / "mlruns" / "0" / "abc123"
    (run / "metrics" / "train").mkdir(parents=True)
    (run / "metrics" / "train" / "loss").write_text(
        "".join(f"{1700000000000 + s} {2.0 - 0.01 * s} {s}\n" for s in range(10))
    )
    (run / "metrics" / "grad_norm").write_text(
        "".join(f"{1700000000000 + s} 1.0 {s}\n" for s in range(10))
    )
    assert detect_format(run) == "mlflow"
    log, recs = _all(run)
    assert log.columns["loss"] == "train/loss"
    assert len(recs) == 10 and recs[9].grad_norm == 1.0


def test_tensorboard_event_file_roundtrip(tmp_path):
    pytest.importorskip("tensorboard")
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    logdir = tmp_path / "runs" / "exp1"
    w = torch_tb.SummaryWriter(log_dir=str(logdir))
    for s in range(30):
        w.add_scalar("train/loss", 2.0 - 0.01 * s, s)
        w.add_scalar("grad_norm", 1.0 + 0.001 * s, s)
        w.add_scalar("lr", 1e-3, s)
        w.add_scalar("accuracy", 0.5, s)
    w.close()
    assert detect_format(logdir) == "tensorboard"
    log, recs = _all(logdir)
    assert log.format == "tensorboard"
    assert log.columns["loss"] == "train/loss" and log.columns["lr"] == "lr"
    assert [r.step for r in recs] == list(range(30))
    assert recs[10].loss == pytest.approx(1.9) and recs[10].grad_norm == pytest.approx(1.01)
    assert recs[0].time is not None and recs[29].time >= recs[0].time
    ev = next(logdir.glob("*tfevents*"))
    _, recs2 = _all(ev)  # a single event file works too
    assert len(recs2) == 30
    _, recs3 = _all(logdir, mapping={"loss": "accuracy"})
    assert recs3[0].loss == 0.5


def test_param_norm_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    logdir = tmp_path / "runs" / "exp2"
    w = torch_tb.SummaryWriter(log_dir=str(logdir))
    for s in range(20):
        w.add_scalar("train/loss", 2.0 - 0.01 * s, s)
        w.add_scalar("train/update_norm", 0.5, s)
        if s % 2 == 0:
            w.add_scalar("train/param_norm", 50.0 + s, s)
    w.close()
    log, recs = _all(logdir)
    assert log.columns["param_norm"] == "train/param_norm"
    assert log.columns["step_norm"] == "train/update_norm"
    assert [r.param_norm for r in recs[:4]] == [50.0, None, 52.0, None]
    assert recs[3].step_norm == 0.5 and recs[3].time is not None


def test_record_positions_keep_their_places():
    from anet_lite.readers import FIELDS, Record

    assert FIELDS[-2:] == ("param_norm", "processivity") and Record._fields == FIELDS
    r = Record(3, 1.5, 2.0, 0.1, 0.2, 1e-3, 9.0, 50.0)  # the eight positions of before
    assert (r.step, r.time, r.param_norm, r.processivity) == (3, 9.0, 50.0, None)
    assert Record(3, 1.5, processivity=-0.25).processivity == -0.25


@pytest.mark.parametrize(
    "name",
    [
        "processivity",
        "step_processivity",
        "train/processivity",
        "train_processivity",
        "update_cos",
        "cos_update_grad",
        "grad_update_cos",
        "Processivity",
        "metrics.processivity",
    ],
)
def test_processivity_aliases(tmp_path, name):
    p = _write(
        tmp_path / "p.csv",
        f"step,loss,update_norm,param_norm,{name}\n0,2.0,0.5,50.0,0.25\n1,1.9,0.6,50.5,-0.5\n",
    )
    log, recs = _all(p)
    assert log.columns["processivity"] == name
    assert log.columns["step_norm"] == "update_norm" and log.columns["param_norm"] == "param_norm"
    assert [(r.step_norm, r.param_norm, r.processivity) for r in recs] == [
        (0.5, 50.0, 0.25),
        (0.6, 50.5, -0.5),
    ]


def test_processivity_absent_gaps_mapping_and_errors(tmp_path):
    p = _write(tmp_path / "a.csv", "step,loss,param_norm\n0,2.0,50\n1,1.9,51\n")
    log, recs = _all(p)
    assert "processivity" not in log.columns and [r.processivity for r in recs] == [None, None]
    p = _write(
        tmp_path / "g.csv", "step,loss,processivity\n0,2.0,0.5\n1,1.9,\n2,1.8,null\n3,1.7,nan\n"
    )
    log, recs = _all(p)
    assert [r.processivity for r in recs[:3]] == [0.5, None, None]
    assert math.isnan(recs[3].processivity)
    assert log.stats.empty_cells == {"processivity": 2}
    assert log.stats.non_finite == {"processivity": 1}
    bad = "step,loss,param_norm,processivity\n0,2.0,50,0.3\n1,1.9,50,0.2\n2,1.8,50,high\n"
    _assert_mapped_and_bad_cell(
        tmp_path, "processivity", "cosine", ("0.1", "-0.2"), -0.2, bad, 4, 4
    )


def test_processivity_jsonl(tmp_path):
    lines = [
        {"step": 1, "train": {"loss": 2.0, "processivity": 0.5}, "param_norm": 50.0},
        {"step": 2, "train": {"loss": 1.9}},
        {"step": 2, "train": {"processivity": "-0.125"}},
        {"step": 3, "train": {"loss": 1.8, "processivity": None}},
    ]
    first = (1, 2.0, None, None, None, None, None, 50.0, 0.5)
    _assert_nested_jsonl_field(tmp_path, "processivity", lines, first, [0.5, -0.125, None])
    p2 = _write(tmp_path / "bad.jsonl", '{"step": 1, "loss": 2, "update_cos": [0.1]}\n')
    with pytest.raises(LogFormatError, match="expected a number") as ei:
        list(open_log(p2))
    assert ei.value.line == 1 and ei.value.column_name == "update_cos"
    p3 = _write(
        tmp_path / "bad2.jsonl",
        '{"step": 1, "loss": 2}\n{"step": 2, "loss": 2, "processivity": "up"}\n',
    )
    with pytest.raises(LogFormatError, match="not a number") as ei:
        list(open_log(p3))
    assert ei.value.line == 2 and ei.value.column_name == "processivity"
    assert str(p3) in str(ei.value)


def test_processivity_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    logdir = tmp_path / "runs" / "exp3"
    w = torch_tb.SummaryWriter(log_dir=str(logdir))
    for s in range(20):
        w.add_scalar("train/loss", 2.0 - 0.01 * s, s)
        w.add_scalar("train/param_norm", 50.0, s)
        if s % 2 == 0:
            w.add_scalar("train/processivity", 0.5 - 0.125 * s, s)
    w.close()
    log, recs = _all(logdir)
    assert log.columns["processivity"] == "train/processivity"
    assert log.columns["param_norm"] == "train/param_norm"
    assert [r.processivity for r in recs[:4]] == [0.5, None, 0.25, None]
    assert recs[3].param_norm == 50.0 and recs[3].time is not None
    _, recs2 = _all(logdir, mapping={"processivity": "train/param_norm"})
    assert recs2[1].processivity == 50.0 and recs2[1].param_norm is None


@pytest.mark.parametrize(
    "name, content, line, column",
    [
        ("missing.csv", "step,val_loss\n1,2\n", 1, None),
        ("empty.csv", "", 1, None),
        ("header_only.csv", "step,loss\n", None, None),
        ("garbage.csv", None, 1, None),
        ("notes.txt", "This is not a log at all\nreally\n", 1, None),
        ("nonnum.csv", "step,loss\n1,2\n2,2\n3,2\n4,2\n5,2\n6,abc\n", 7, 2),
    ],
)
def test_bad_files_name_file_line_column(tmp_path, name, content, line, column):
    p = tmp_path / name
    if content is None:
        p.write_bytes(bytes(range(256)) * 4)
    else:
        p.write_text(content)
    with pytest.raises(LogFormatError) as ei:
        list(open_log(p))
    e = ei.value
    assert e.file == str(p) and str(p) in str(e)
    assert e.line == line
    if column is not None:
        assert e.column == column and f"line {line}, column {column}" in str(e)


def test_unknown_extension(tmp_path):
    p = tmp_path / "data.parquet"
    p.write_bytes(b"PAR1\x15\x04\x15\x00")
    with pytest.raises(LogFormatError, match=r"binary|unknown"):
        open_log(p)


def test_reading_is_lazy_and_constant_memory(tmp_path):
    p = tmp_path / "long.csv"
    with open(p, "w") as f:
        f.write("step,loss,grad_norm\n")
        f.writelines(f"{i},{1.0 + (i % 7) * 0.01},{0.5}\n" for i in range(100_000))
    log = open_log(p)
    first = next(iter(log))
    assert first.step == 0
    assert log.stats.lines < 1000  # the first record did not read the whole file
    tracemalloc.start()
    n = sum(1 for _ in log)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 99_999
    assert peak < 2_000_000  # bytes: independent of the 100k lines (~2.5 MB of text)


# ---- the CSV fast path (whole blocks converted column-wise) vs the row-by-row path ------


def _csv_cases(rng):
    """CSV texts that exercise every branch: gaps, nan/inf, joins, jumps, restarts, errors."""
    n = 3000

    def rows(step_fn, cell_fn, header="step,loss,grad_norm"):
        out = [header]
        for i in range(n):
            out.append(cell_fn(i, step_fn(i)))
        return "\n".join(out) + "\n"

    plain = lambda i, s: f"{s},{1 + rng.random():.5f},{rng.random():.4f}"  # noqa: E731
    yield "plain", rows(lambda i: i, plain)
    yield "stride5", rows(lambda i: 5 * i + 3, plain)
    yield "jumps", rows(lambda i: i + 10 * (i // 700), plain)
    yield "restart", rows(lambda i: i % 1700, plain)
    yield "joins", rows(lambda i: i // 2, plain)  # every step twice: rows are joined
    yield "join_at_block_edge", rows(lambda i: i - (i == 513) - (i == 1025), plain)
    yield (
        "nonfinite",
        rows(
            lambda i: i,
            lambda i, s: (
                f"{s},{['nan', 'inf', '-inf', '1e400'][i % 4] if i % 97 == 50 else 1.5},"
                + ("nan" if i % 89 == 3 else "2")
            ),  # grad_norm's first nan comes first
        ),
    )
    yield (
        "gaps",
        rows(
            lambda i: i,
            lambda i, s: f"{s},{'' if i % 311 == 0 else 1.0},{'NA' if i % 7 == 0 else 3}",
        ),
    )
    yield (
        "float_steps",
        rows(lambda i: i, lambda i, s: f"{s}.0,1.0,2.0" if i % 900 == 5 else f"{s},1.0,2.0"),
    )
    yield (
        "blank_and_short",
        rows(
            lambda i: i,
            lambda i, s: "" if i % 600 == 0 else (f"{s},1.0" if i % 601 == 0 else f"{s},1.0,2.0"),
        ),
    )
    yield (
        "no_step",
        rows(
            lambda i: i, lambda i, s: f"{1 + rng.random()},{rng.random()}", header="loss,grad_norm"
        ),
    )
    yield (
        "time_ms",
        rows(lambda i: i, lambda i, s: f"{s},1.0,{(i % 1300) * 100.0}", header="step,loss,time_ms"),
    )
    yield "tsv", rows(lambda i: i, lambda i, s: f"{s}\t1.25\t0.5", header="step\tloss\tgrad_norm")
    yield (
        "quoted_multiline",
        rows(
            lambda i: i,
            lambda i, s: f'{s},1.0,2.0,"a\nb"' if i == 800 else f"{s},1.0,2.0,x",
            header="step,loss,grad_norm,note",
        ),
    )
    yield (
        "param_norm",
        rows(
            lambda i: i,
            lambda i, s: (
                f"{s},1.0,{rng.random():.4f},"
                + ("" if i % 1100 == 7 else ("nan" if i % 977 == 5 else f"{50 + rng.random():.3f}"))
            ),
            header="step,loss,update_norm,weight_norm",
        ),
    )
    yield (
        "bad_param_norm",
        rows(
            lambda i: i,
            lambda i, s: f"{s},1.0,0.5,{'big' if i == 1300 else '50.0'}",
            header="step,loss,step_norm,param_norm",
        ),
    )
    yield (
        "processivity",
        rows(
            lambda i: i,
            lambda i, s: (
                f"{s},1.0,0.5,50.0,"
                + (
                    ""
                    if i % 1000 == 9
                    else ("inf" if i % 899 == 4 else f"{rng.random() - 0.5:.4f}")
                )
            ),
            header="step,loss,update_norm,param_norm,update_cos",
        ),
    )
    yield (
        "bad_processivity",
        rows(
            lambda i: i,
            lambda i, s: f"{s},1.0,0.5,50.0,{'up' if i == 1700 else '0.25'}",
            header="step,loss,step_norm,param_norm,processivity",
        ),
    )
    yield (
        "bad_cell",
        rows(lambda i: i, lambda i, s: f"{s},oops,2.0" if i == 1500 else f"{s},1.0,2.0"),
    )
    yield (
        "bad_step",
        rows(lambda i: i, lambda i, s: f"{s}.5,1.0,2.0" if i == 2100 else f"{s},1.0,2.0"),
    )


def _read_all(path):
    log = open_log(path)
    recs, err = [], None
    try:
        for r in log:
            recs.append(tuple(float("nan") if isinstance(v, float) and v != v else v for v in r))
    except LogFormatError as e:
        err = str(e)
    recs = [tuple("nan" if isinstance(v, float) and v != v else v for v in r) for r in recs]
    return recs, err, json.dumps(log.stats.as_dict()), log.stats.lines  # key order too


def test_csv_fast_path_matches_row_by_row(tmp_path, monkeypatch):
    from anet_lite import readers

    rng = random.Random(5)
    cases = list(_csv_cases(rng))
    fast = {}
    for name, text in cases:
        p = tmp_path / f"{name}.csv"
        p.write_text(text)
        fast[name] = _read_all(p)
    monkeypatch.setattr(readers.csv_files.CsvReader, "_fast_block", lambda self, *a: None)
    for name, _ in cases:
        slow = _read_all(tmp_path / f"{name}.csv")
        assert fast[name] == slow, name
    assert "line 1502" in fast["bad_cell"][1] and "column 2 ('loss')" in fast["bad_cell"][1]
    assert len(fast["bad_cell"][0]) == 1499  # every step before the bad line was yielded
    assert "line 1302, column 4 ('param_norm')" in fast["bad_param_norm"][1]
    pn_recs, _, pn_stats, _ = fast["param_norm"]
    assert pn_recs[0][7] > 50.0 and pn_recs[7][7] is None and pn_recs[5][7] == "nan"
    assert json.loads(pn_stats)["empty_cells"] == {"param_norm": 3}
    assert json.loads(pn_stats)["non_finite"] == {"param_norm": 4}
    assert "line 1702, column 5 ('processivity')" in fast["bad_processivity"][1]
    assert len(fast["bad_processivity"][0]) == 1699
    pc_recs, _, pc_stats, _ = fast["processivity"]
    assert all(r[7] == 50.0 for r in pc_recs) and pc_recs[0][8] is not None
    assert -0.5 <= pc_recs[1][8] <= 0.5 and pc_recs[9][8] is None and pc_recs[4][8] == math.inf
    assert json.loads(pc_stats)["empty_cells"] == {"processivity": 3}
    assert json.loads(pc_stats)["non_finite"] == {"processivity": 4}
    joins, restart, nonf = (json.loads(fast[k][2]) for k in ("joins", "restart", "nonfinite"))
    assert joins["records"] == 1500 and restart["step_regressions"] == 1
    assert list(nonf["non_finite"]) == ["grad_norm", "loss"]


def test_a_format_is_one_reader_class_in_the_registry(tmp_path, monkeypatch):
    """Every --format name maps to its FormatReader class, and a new format needs nothing
    but a FormatReader subclass and its registry entry."""
    from anet_lite import readers
    from anet_lite.readers.base import FormatReader

    assert ("auto",) + tuple(readers.READERS) == readers.FORMATS
    for name, cls in readers.READERS.items():
        assert issubclass(cls, FormatReader) and name in cls.formats, name

    class SpaceSeparated(FormatReader):  # "step loss" per line
        formats = ("ssv",)

        def rows(self):
            self.columns["loss"] = "column 2"
            with open(self.path) as f:
                for n, line in enumerate(f, 1):
                    step, loss = line.split()
                    yield [int(step), float(loss)] + [None] * 7 + [n]

    p = tmp_path / "run.ssv"
    p.write_text("0 2.5\n1 2.0\n1 1.9\n3 1.5\n")
    with pytest.raises(ValueError, match="ssv"):
        readers.open_log(p, "ssv")
    monkeypatch.setitem(readers.READERS, "ssv", SpaceSeparated)
    log = readers.open_log(p, "ssv")
    recs = list(log)
    assert [(r.step, r.loss) for r in recs] == [(0, 2.5), (1, 1.9), (3, 1.5)]  # joined by step
    assert log.columns == {"loss": "column 2"} and log.stats.records == 3
