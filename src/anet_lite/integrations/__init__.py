"""Send the Monitor's snapshots where users already look: TensorBoard, W&B, MLflow.

Importing this package imports no backend; each sink imports its own in ``start()``::

    from anet_lite.integrations import TensorBoardSink
    monitor = Monitor(run_log=TensorBoardSink("runs/anet"))

See ``docs/integrations.md`` for the metric names and one example per sink.
"""

from __future__ import annotations

from .sinks import (
    STATUS_CODES,
    MLflowSink,
    MultiSink,
    Sink,
    TensorBoardSink,
    WandbSink,
    snapshot_metrics,
)

__all__ = [
    "STATUS_CODES",
    "MLflowSink",
    "MultiSink",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "snapshot_metrics",
]
