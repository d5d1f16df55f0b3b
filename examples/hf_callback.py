"""A tiny GPT-2 (built from a config, byte tokens, offline) whose lr jumps 100x at step 60."""

import inspect
import json
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from anet_lite.integrations.hf import AnetTrainer

ids = torch.tensor(list(inspect.getsource(json.decoder).encode()))
data = [{"input_ids": ids[i : i + 32], "labels": ids[i : i + 32]} for i in range(0, 4000, 40)]
cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
cfg.bos_token_id = cfg.eos_token_id = 0  # byte vocabulary: no GPT-2 special tokens
model = GPT2LMHeadModel(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if s >= 60 else 1.0)  # the bug
args = TrainingArguments(
    tempfile.mkdtemp(),
    max_steps=100,
    logging_steps=1,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    per_device_train_batch_size=8,
)
trainer = AnetTrainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched))
trainer.train()
print(trainer.anet.explain())
print([a.reason for a in trainer.anet.actions])
