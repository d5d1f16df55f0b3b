"""anet-lite guarding a Lightning run; the lr is x100 from step 200 on (a bug, on purpose).

pip install 'anet-lite[lightning]' && python examples/lightning_callback.py [ROOT_DIR]
"""

import sys

import lightning.pytorch as pl
import torch
from torch import nn

from anet_lite.integrations.lightning import AnetCallback


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        bug = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if s >= 200 else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": bug, "interval": "step"}}


torch.manual_seed(0)
x = torch.randn(8192, 8)
data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin())
anet = AnetCallback()  # tombstones: <default_root_dir>/anet_tombstones.jsonl (rank 0)
root = sys.argv[1] if len(sys.argv) > 1 else "lightning_runs"
trainer = pl.Trainer(max_steps=256, callbacks=[anet], default_root_dir=root, log_every_n_steps=16)
trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=32))
for action in anet.guard.actions:
    print(action.step, action.kind, action.reason)
print(anet.guard.last.explain())
