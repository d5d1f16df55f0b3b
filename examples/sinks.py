"""Write a Monitor's snapshots to TensorBoard (view: tensorboard --logdir runs)."""

import math
import sys

from anet_lite import Monitor
from anet_lite.integrations import TensorBoardSink

log_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/anet-example"
with TensorBoardSink(log_dir) as sink:  # pip install 'anet-lite[tensorboard]'
    monitor = Monitor(run_log=sink)
    for step in range(200):
        loss = 2.0 * math.exp(-step / 80) + 0.01 * math.sin(step)  # your training step here
        monitor.update(loss, step=step, grad_norm=1.0, lr=1e-3)
