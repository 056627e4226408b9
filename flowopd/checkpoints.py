"""A training checkpoint as a LoRA folder: what ``lora/`` would have held had the run stopped there (learning curves)."""

from __future__ import annotations

import json
from pathlib import Path

from flowopd.errors import FlowOPDError


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the LoRA of ``checkpoint`` (``RUN/checkpoints/step-N``; its EMA weights when the run keeps an EMA) to ``out``.

    The adapter is rebuilt as the trainer builds it (the run's ``config.yaml``:
    base, rank, alpha, targets), so the EMA's parameter order is the trainer's.
    A GRPO run only: an OPD student starts from a cold-start LoRA whose layout
    the checkpoint does not record.
    """
    import torch
    import yaml

    from flowopd.lora import add_lora, load_safetensors, save_lora, set_lora_state_dict
    from flowopd.models import load_backbone, model_digest
    from flowopd.run_folder import CONFIG_FILE
    from flowopd.runinfo import atomic_dir
    from flowopd.train_config import TrainConfig
    from flowopd.trainer import lora_record

    checkpoint, out = Path(checkpoint), Path(out)
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        raise FlowOPDError(f"{checkpoint} is not a complete training checkpoint (no trainer_state.json); pass RUN/checkpoints/step-N")
    run = checkpoint.parent.parent
    cfg = TrainConfig.model_validate(yaml.safe_load((run / CONFIG_FILE).read_text()))
    if cfg.opd is not None:
        raise FlowOPDError(f"{run} is an OPD run: its checkpoints hold a cold-started LoRA; evaluate {run}/lora instead")
    state = json.loads(state_file.read_text())
    if state.get("base_digest") != model_digest(cfg.model):
        raise FlowOPDError(f"{checkpoint} was trained on another version of {cfg.model!r}; it cannot be rebuilt on this one")
    backbone = load_backbone(cfg.model)
    backbone.requires_grad_(False)
    add_lora(backbone.transformer, cfg.lora.rank, cfg.lora.alpha, tuple(cfg.lora.targets))
    set_lora_state_dict(backbone.transformer, load_safetensors(checkpoint / "lora.safetensors"))
    has_ema = (checkpoint / "ema.safetensors").is_file()
    if has_ema:
        params = [p for p in backbone.transformer.parameters() if p.requires_grad]
        shadow = load_safetensors(checkpoint / "ema.safetensors")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(shadow[str(i)])
    info = {**lora_record(cfg, state["base_digest"], state["step"], has_ema), "name": f"{cfg.name}@{state['step']}"}
    with atomic_dir(out, marker="lora_info.json") as tmp:
        save_lora(backbone.transformer, tmp, info)
    return out
