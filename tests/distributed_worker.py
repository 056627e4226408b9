"""Run by tests/test_distributed.py under `accelerate launch --num_processes 2` (CPU, gloo): GRPO (or, with a teachers
folder, OPD; with `nft`, DiffusionNFT) steps, then each process writes what it saw: its samples, the gathered rewards or KLs, the advantages
and its LoRA weights."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_opd import opd_config  # noqa: E402
from test_trainer import tiny_config  # noqa: E402

from flowopd.trainer import Trainer  # noqa: E402

model, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
if sys.argv[4:] == ["watch"]:  # a whole run with evaluations during training (flowopd.watch) on every process
    from test_watch import EVAL

    trainer = Trainer(tiny_config(Path(model), steps=steps, checkpoint_every=100, eval_every=1, eval=EVAL), out / "run")
    trainer.train()  # ends the process group itself
    lora = torch.cat([p.detach().flatten() for p in trainer.params])
    rank = trainer.accelerator.process_index
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "lora_sha": hashlib.sha256(lora.numpy().tobytes()).hexdigest()}))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, see the end of this file
if sys.argv[4:] == ["nft"]:  # DiffusionNFT: ODE rollouts of the old policy, per-sample times
    from test_nft_training import nft_config

    cfg = nft_config(Path(model), steps=steps, checkpoint_every=100, updates_per_rollout=1)  # loss and grad before any update
elif len(sys.argv) > 4:  # OPD with the tiny teachers in this folder (merge cold start, made once by the main process)
    teachers = {t: Path(sys.argv[4]) / t for t in ("compose", "text", "quality")}
    cfg = opd_config(Path(model), teachers, steps=steps, checkpoint_every=100, opd={"objective": "kl_pg"})
else:
    cfg = tiny_config(Path(model), steps=steps, checkpoint_every=100)
trainer = Trainer(cfg, out / "run")
seen = []
for _ in range(steps):
    metrics = trainer.train_step()
    b = trainer.objective.last_batch
    seen.append({k: (v.tolist() if torch.is_tensor(v) else v) for k, v in b.items()})
    seen[-1]["metrics"] = {k: metrics[k] for k in ("loss", "grad_norm")}
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
# close the gloo group, then leave without interpreter teardown: gloo's threads can still abort a process there
# ("terminate called without an active exception", SIGABRT), which failed this test in two fresh-checks even after
# end_training; everything the test reads is written and flushed by now
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()  # destroys the process group, like Trainer.train()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
