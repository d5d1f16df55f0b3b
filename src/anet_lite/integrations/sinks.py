"""Sinks: write every ``Snapshot`` to TensorBoard, Weights & Biases or MLflow.

A ``Sink`` has the ``RunLog`` interface (``write(snap)``, ``close()``), so any sink (or a
``MultiSink`` of several) can be passed as ``Monitor(run_log=sink)``.

* Lazy: a backend is imported in ``start()`` (called by ``with sink:`` or by the first
  ``write``), never at import time. A missing backend raises ``ImportError`` naming the
  extra to install when ``start()`` is called directly (or via ``with``); from ``write`` it
  is warned once and the sink turns itself off.
* Never raises into the training loop: an error in ``write``/``close`` is warned once
  (``RuntimeWarning``) and training goes on (``on_error="raise"`` for tests).
* Rank 0 only: when ``torch.distributed`` is initialised, only rank 0 writes
  (``rank_zero_only=False`` to write from every rank). Torch is never imported for this.

Metric names (``prefix`` defaults to ``"anet/"``)::

    anet/theta  anet/f_total  anet/sdot  anet/proc  anet/zscore
    anet/precursor    0/1
    anet/alert        0/1
    anet/status_code  STATUS_CODES: warming_up 0, healthy 1, recovering 1.5, drifting 2,
                      precursor 3, collapsed 4 (unknown -1)
    anet/<key>        every numeric (or bool -> 0/1) evidence entry, e.g. anet/loss,
                      anet/grad_norm, anet/lr, anet/grad_ratio, anet/update_ratio, anet/gns

Alerts are also written as text when one starts (or its status changes while it lasts):
``snap.explain()`` as TensorBoard text ``anet/alert_text``, W&B summary
``anet/last_alert`` (+ an ``anet/alerts`` table at close), MLflow tags ``anet.last_alert``.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional

__all__ = [
    "STATUS_CODES",
    "MLflowSink",
    "MultiSink",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "snapshot_metrics",
]

STATUS_CODES: Dict[str, float] = {
    "warming_up": 0,
    "healthy": 1,
    "recovering": 1.5,
    "drifting": 2,
    "precursor": 3,
    "collapsed": 4,
}
_CORE = ("theta", "f_total", "sdot", "proc", "zscore")
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")


def snapshot_metrics(snap: Any, prefix: str = "anet/") -> Dict[str, float]:
    """The numbers every sink writes for one snapshot: ``{"anet/theta": 0.98, ...}``."""
    out: Dict[str, float] = {}
    for k in _CORE:
        v = getattr(snap, k, None)
        if isinstance(v, numbers.Real):
            out[prefix + k] = float(v)
    out[prefix + "precursor"] = 1.0 if snap.precursor else 0.0
    out[prefix + "alert"] = 1.0 if snap.alert else 0.0
    out[prefix + "status_code"] = float(STATUS_CODES.get(snap.status, -1))
    for k, v in (snap.evidence or {}).items():
        if not isinstance(v, numbers.Real) or k == "step":
            continue  # strings (cause, event) go to the alert text, not the scalars
        key = prefix + _BAD_KEY.sub("_", str(k))
        if key not in out:
            out[key] = float(v)
    return out


def _alert_text(snap: Any) -> str:
    try:
        text = snap.explain()
    except Exception:  # explain is advice; its failure must not stop the numbers
        text = ""
    head = f"step {snap.step}: {snap.status}"
    cause = (snap.evidence or {}).get("cause")
    if cause:
        head += f" ({cause})"
    return f"{head} — {text}" if text else head


def _is_rank_zero() -> bool:
    """False only on a non-zero rank of an initialised torch.distributed group."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    if dist is None:
        return True
    try:
        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()) == 0
    except Exception:
        pass
    return True


def _need(module: str, extra: str, sink: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{sink} needs {module.split('.')[0]}: pip install 'anet-lite[{extra}]'"
        ) from exc


class Sink:
    """Base class: ``start()``, ``write(snap)``, ``close()``; a context manager.

    ``every=N`` writes the numbers every N-th step only (plus every alert step and every
    status change): for slow stores such as MLflow's (~1 ms a step on a local folder, an
    HTTP call on a server).

    Subclasses implement ``_open()``, ``_log(step, metrics)``, ``_alert(step, snap, text)``
    and ``_close()``; the base class does the laziness, rank-0 check and error isolation.
    """

    def __init__(
        self,
        *,
        prefix: str = "anet/",
        every: int = 1,
        rank_zero_only: bool = True,
        on_error: str = "warn",
    ) -> None:
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        self.prefix = prefix
        self.every = int(every)
        self.rank_zero_only = bool(rank_zero_only)
        self.on_error = on_error
        self.active = False  # True once started, on the writing rank, backend open
        self._started = False
        self._closed = False
        self._warned = False
        self._next_step = 0
        self._prev_alert: Optional[str] = None  # status of the alert in progress
        self._prev_status: Optional[str] = None

    # ---- public ------------------------------------------------------------------------

    def start(self) -> Sink:
        """Import the backend and open the run (idempotent). Raises on a missing backend."""
        if self._started:
            return self
        self._started = True
        if self.rank_zero_only and not _is_rank_zero():
            return self
        self._open()
        self.active = True
        return self

    def write(self, snap: Any) -> None:
        """Write one snapshot. Never raises (unless ``on_error="raise"``)."""
        if self._closed:
            return
        try:
            if not self._started:
                self.start()
            if not self.active:
                return
            step = int(snap.step) if snap.step is not None else self._next_step
            self._next_step = step + 1
            changed, self._prev_status = snap.status != self._prev_status, snap.status
            if self.every == 1 or step % self.every == 0 or snap.alert or changed:
                self._log(step, snapshot_metrics(snap, self.prefix))
            if snap.alert:
                if self._prev_alert != snap.status:
                    self._alert(step, snap, _alert_text(snap))
                self._prev_alert = snap.status
            else:
                self._prev_alert = None
        except Exception as exc:
            self._fail(exc)

    def close(self) -> None:
        """Flush and close the backend run (idempotent; never raises unless asked)."""
        if self._closed:
            return
        self._closed = True
        if self.active:
            self.active = False
            try:
                self._close()
            except Exception as exc:
                self._fail(exc)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- for subclasses ----------------------------------------------------------------

    def _open(self) -> None:
        pass

    def _log(self, step: int, metrics: Dict[str, float]) -> None:
        raise NotImplementedError

    def _alert(self, step: int, snap: Any, text: str) -> None:
        pass

    def _close(self) -> None:
        pass

    def _fail(self, exc: BaseException) -> None:
        if self.on_error == "raise":
            raise exc
        if not self.active and self._started:
            self._closed = True  # could not open: stop trying every step
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"anet_lite {type(self).__name__} error (training continues): {exc!r}",
                RuntimeWarning,
                stacklevel=3,
            )


class MultiSink(Sink):
    """Write each snapshot to several sinks; one failing sink does not stop the others."""

    def __init__(self, sinks: Iterable[Any]) -> None:
        super().__init__()
        self.sinks: List[Any] = list(sinks)

    def start(self) -> MultiSink:
        for s in self.sinks:
            if hasattr(s, "start"):
                s.start()
        self._started = self.active = True
        return self

    def write(self, snap: Any) -> None:
        for s in self.sinks:
            try:
                s.write(snap)
            except Exception as exc:  # a plain RunLog may raise; a Sink does not
                self._fail(exc)

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception as exc:
                self._fail(exc)
        self._closed = True


# ---- TensorBoard ---------------------------------------------------------------------------


class _EventWriter:
    """TensorBoard's own event-file writer (the one under torch's SummaryWriter), no torch."""

    def __init__(self, log_dir: str, flush_secs: float) -> None:
        efw = _need(
            "tensorboard.summary.writer.event_file_writer", "tensorboard", "TensorBoardSink"
        )
        self._event = _need(
            "tensorboard.compat.proto.event_pb2", "tensorboard", "TensorBoardSink"
        ).Event
        self._summary = _need(
            "tensorboard.compat.proto.summary_pb2", "tensorboard", "TensorBoardSink"
        ).Summary
        self._w = efw.EventFileWriter(log_dir, flush_secs=flush_secs)

    def add_scalars_at(self, step: int, metrics: Dict[str, float]) -> None:
        values = [self._summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]
        summary = self._summary(value=values)
        self._w.add_event(self._event(summary=summary, step=step, wall_time=time.time()))

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        summary = text_pb(tag, text)
        self._w.add_event(self._event(summary=summary, step=step, wall_time=time.time()))

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class TensorBoardSink(Sink):
    """Scalars ``anet/*`` and alert text ``anet/alert_text`` in a TensorBoard log dir.

    Writes with TensorBoard's own event writer (works without torch). Pass ``writer=`` to
    log into an existing ``torch.utils.tensorboard.SummaryWriter`` (or anything with
    ``add_scalar``/``add_text``) instead; that writer is flushed, not closed, at close.
    """

    def __init__(
        self,
        log_dir: Any = None,
        *,
        writer: Any = None,
        flush_secs: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if log_dir is None and writer is None:
            raise ValueError("TensorBoardSink needs a log_dir or a writer")
        self.log_dir = None if log_dir is None else str(log_dir)
        self.flush_secs = float(flush_secs)
        self.writer = writer
        self._own = writer is None

    def _open(self) -> None:
        if self._own:
            self.writer = _EventWriter(self.log_dir, self.flush_secs)  # type: ignore[arg-type]

    def _log(self, step: int, metrics: Dict[str, float]) -> None:
        if self._own:
            self.writer.add_scalars_at(step, metrics)
        else:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)

    def _alert(self, step: int, snap: Any, text: str) -> None:
        if hasattr(self.writer, "add_text"):
            self.writer.add_text(self.prefix + "alert_text", text, step)

    def _close(self) -> None:
        if self._own:
            self.writer.close()
        elif hasattr(self.writer, "flush"):
            self.writer.flush()

    def flush(self) -> None:
        if self.active and hasattr(self.writer, "flush"):
            self.writer.flush()


# ---- Weights & Biases ----------------------------------------------------------------------


class WandbSink(Sink):
    """Metrics ``anet/*`` (x axis ``anet/step``) in a W&B run; offline by default.

    Logs into ``run=`` or the already active ``wandb.run`` if there is one (left open at
    close); otherwise ``wandb.init(project, mode, dir, name, **init_kwargs)`` and finishes
    it at close. Alerts: summary ``anet/last_alert`` / ``anet/last_alert_step`` /
    ``anet/first_alert_step`` and, at close, a table ``anet/alerts``.
    """

    def __init__(
        self,
        project: Optional[str] = None,
        *,
        mode: str = "offline",
        dir: Any = None,
        name: Optional[str] = None,
        run: Any = None,
        init_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.project, self.mode, self.name = project, mode, name
        self.dir = None if dir is None else str(dir)
        self.init_kwargs = dict(init_kwargs or {})
        self.run = run
        self._own = False
        self._alerts: List[List[Any]] = []
        self._last_step: Optional[int] = None  # the last step logged to a run of our own

    def _open(self) -> None:
        wandb = _need("wandb", "wandb", "WandbSink")
        self._wandb = wandb
        if self.run is None and getattr(wandb, "run", None) is not None:
            self.run = wandb.run
        if self.run is None:
            self.run = wandb.init(
                project=self.project,
                mode=self.mode,
                dir=self.dir,
                name=self.name,
                **self.init_kwargs,
            )
            self._own = True
        self.run.define_metric(self.prefix + "step")
        self.run.define_metric(self.prefix + "*", step_metric=self.prefix + "step")

    def _log(self, step: int, metrics: Dict[str, float]) -> None:
        metrics[self.prefix + "step"] = step
        if self._own:
            # commit now: a row left open for finish() to commit was lost now and then (the
            # last step of an offline run, under load)
            self.run.log(metrics, step=step, commit=True)
            self._last_step = step
        else:  # the user's run has its own step counter
            self.run.log(metrics)

    def _alert(self, step: int, snap: Any, text: str) -> None:
        summary = self.run.summary
        p = self.prefix
        if not self._alerts:
            summary[p + "first_alert_step"] = step
        summary[p + "last_alert"] = text
        summary[p + "last_alert_step"] = step
        self._alerts.append([step, snap.status, str(snap.evidence.get("cause", "")), text])

    def _close(self) -> None:
        try:
            if self._alerts:
                table = self._wandb.Table(
                    columns=["step", "status", "cause", "explanation"], data=self._alerts
                )
                if self._own and self._last_step is not None:
                    # a row of its own after the last step: logged without a step it could
                    # land on the last step's row and replace it (1 run in ~15, under load)
                    self.run.log(
                        {self.prefix + "alerts": table}, step=self._last_step + 1, commit=True
                    )
                else:
                    self.run.log({self.prefix + "alerts": table})
        finally:
            if self._own:
                self.run.finish()


# ---- MLflow --------------------------------------------------------------------------------


class MLflowSink(Sink):
    """Metrics ``anet/*`` in an MLflow run; alerts as tags ``anet.last_alert`` etc.

    Uses an ``MlflowClient`` (no global active-run state is touched). Logs into ``run_id=``,
    else into ``mlflow.active_run()`` when ``tracking_uri`` is not given and a run is active
    (left open at close), else creates a run in ``experiment`` and terminates it at close.
    A local folder store needs ``MLFLOW_ALLOW_FILE_STORE=true`` with MLflow >= 3.x; a
    ``sqlite:///`` URI needs full ``mlflow`` (sqlalchemy), not ``mlflow-skinny``. At close
    the alerts are also saved as the text artifact ``anet/alerts.txt``.
    """

    def __init__(
        self,
        tracking_uri: Optional[str] = None,
        experiment: str = "anet-lite",
        run_name: Optional[str] = None,
        *,
        run_id: Optional[str] = None,
        tags: Optional[Dict[str, str]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tracking_uri = None if tracking_uri is None else str(tracking_uri)
        self.experiment, self.run_name = experiment, run_name
        self.run_id = run_id
        self.tags = dict(tags or {})
        self._own = False
        self._alerts: List[str] = []

    def _open(self) -> None:
        mlflow = _need("mlflow", "mlflow", "MLflowSink")
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        self._metric, self._tag = Metric, RunTag
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is None and self.tracking_uri is None:
            active = mlflow.active_run()
            if active is not None:
                self.run_id = active.info.run_id
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
            run = self.client.create_run(exp_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
            self._own = True

    def _log(self, step: int, metrics: Dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        batch = [
            self._metric(k, v, ts, step)
            for k, v in metrics.items()
            if not math.isnan(v)  # MLflow stores NaN badly in some stores; a gap reads better
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def _alert(self, step: int, snap: Any, text: str) -> None:
        tags = [
            self._tag("anet.last_alert", text[:5000]),
            self._tag("anet.last_alert_step", str(step)),
            self._tag("anet.status", str(snap.status)),
        ]
        if not self._alerts:
            tags.append(self._tag("anet.first_alert_step", str(step)))
        self._alerts.append(text)
        self.client.log_batch(self.run_id, tags=tags)

    def _close(self) -> None:
        try:
            if self._alerts:
                self.client.log_text(self.run_id, "\n".join(self._alerts) + "\n", "anet/alerts.txt")
        finally:
            if self._own:
                self.client.set_terminated(self.run_id)
