"""A training run's folder: its record, config, log and checkpoints; what may be resumed, restarted or refused.

``RUN/run.json`` marks a started run, ``config.yaml`` is its resolved config,
``log.jsonl`` one line per step, ``checkpoints/step-N`` what ``--resume``
continues from (written whole or not at all), ``lora/`` the result,
``evals/step-N`` the evaluations during training (``eval_every``, :mod:`flowopd.watch`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from flowopd.errors import FlowOPDError
from flowopd.models import model_digest
from flowopd.train_config import TrainConfig

RUN_MARKER = "run.json"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
RESTART = "restart"  # prepare_run_dir: the folder holds a run with no checkpoint yet; start it over in place
COLDSTART_DIR = "coldstart"  # an OPD run's cold-start LoRA (a fresh start left it behind only if it stopped before run.json)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a half-written one is a hidden temp folder and never listed)."""
    folder = out / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()) if folder.is_dir() else []


def prepare_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> Path | str | None:
    """Check the output folder against the request; return the checkpoint to resume from, None to start fresh, or
    ``RESTART``: a run stopped before its first checkpoint holds nothing to resume, so the same config run again (with or
    without ``--resume``) starts over in place once :func:`clear_unstarted_run` drops its partial files."""
    if out.exists() and not out.is_dir():
        raise FlowOPDError(f"output {out} is a file; pass a folder path with --out")
    from flowopd.runinfo import check_writable

    check_writable(out.parent)
    has_run = (out / RUN_MARKER).is_file()
    if has_run and not checkpoints(out):
        _check_same_run(cfg, out)
        return RESTART
    if not resume:
        if has_run:
            raise FlowOPDError(f"{out} already holds a training run; pass --resume to continue it, or a new --out folder")
        if out.is_dir() and any(p.name != COLDSTART_DIR and not p.name.startswith(f".{COLDSTART_DIR}.") for p in out.iterdir()):
            raise FlowOPDError(f"output folder {out} exists and holds other files; pass a new or empty folder with --out")
        return None
    if not has_run:
        raise FlowOPDError(f"nothing to resume in {out} (no {RUN_MARKER}); drop --resume to start a new run there")
    _check_same_run(cfg, out)
    return checkpoints(out)[-1]


def _check_same_run(cfg: TrainConfig, out: Path) -> None:
    """The run in ``out`` must be this config's (resumable fields aside) on the same base weights."""
    import yaml

    saved = TrainConfig.model_validate(yaml.safe_load((out / CONFIG_FILE).read_text()))
    if saved.model != cfg.model:
        raise FlowOPDError(
            f"the checkpoint in {out} was trained from model {saved.model!r}, not {cfg.model!r}; resume with --model {saved.model} or use a new --out"
        )
    mine, theirs = cfg.identity(), saved.identity()
    if mine != theirs:
        diff = _first_difference(theirs, mine)
        raise FlowOPDError(f"the run in {out} used a different config ({diff}); resume with the run's own config or use a new --out")
    info = json.loads((out / RUN_MARKER).read_text())
    if info.get("base_digest") and info["base_digest"] != model_digest(cfg.model):
        raise FlowOPDError(
            f"the checkpoint in {out} was trained on another version of {cfg.model!r} (its weights changed since); use a new --out"
        )


def clear_unstarted_run(out: Path) -> None:
    """Remove what a run wrote before its first checkpoint (its record, config, log, tracker files), keeping a cold start."""
    for name in (RUN_MARKER, CONFIG_FILE, LOG_FILE):
        (out / name).unlink(missing_ok=True)
    for name in ("tensorboard", "checkpoints", "evals"):
        shutil.rmtree(out / name, ignore_errors=True)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {a!r} then, {b!r} now"


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    from flowopd.runinfo import atomic_file

    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    with atomic_file(path, "w") as f:
        f.write("".join(ln + "\n" for ln in lines))
