"""Run by tests/test_distributed.py under `accelerate launch --num_processes 2` (CPU, gloo): two GRPO steps,
then each process writes what it saw: its samples, the gathered rewards, the advantages and its LoRA weights."""

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import tiny_config  # noqa: E402

from flowopd.trainer import Trainer  # noqa: E402

model, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
trainer = Trainer(tiny_config(Path(model), steps=steps, checkpoint_every=100), out / "run")
seen = []
for _ in range(steps):
    trainer.train_step()
    b = trainer.last_batch
    seen.append({k: (v.tolist() if torch.is_tensor(v) else v) for k, v in b.items()})
lora = torch.cat([p.detach().flatten() for p in trainer.params])
rank = trainer.accelerator.process_index
record = {
    "rank": rank,
    "world": trainer.accelerator.num_processes,
    "steps": seen,
    "lora_sha": hashlib.sha256(lora.numpy().tobytes()).hexdigest(),
    "lora_sum": float(lora.abs().sum()),
}
(out / f"rank{rank}.json").write_text(json.dumps(record))
