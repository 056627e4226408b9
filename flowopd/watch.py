"""Watching a run: evaluation during training (``eval_every``) and reward-hacking alarms.

Every ``eval_every`` steps, and once before the first, the trainer's EMA
weights are written to ``RUN/evals/loras/step-NNNNNN`` and evaluated into ``RUN/evals/step-NNNNNN``
through the evaluation runner (:func:`flowopd.benchmarks.runner.run_eval`:
held-out prompts, the deterministic sampler, the same seeds at every step, the
score cache; on every process under accelerate), so each folder is a normal
evaluation run that ``flowopd report`` reads. ``watch.json`` beside it holds
the image statistics and the alarms and marks the evaluation done: a resumed
run reads it back instead of evaluating again.

Alarms (``eval.alarms``), checked at each evaluation:

- **proxy up, gold down**: a trained reward (the proxy) rose since the
  evaluation ``window`` before while another held-out reward (gold) fell by
  more than ``margin``, paired over the same prompts and seeds, with the 95%
  interval of the fall below 0;
- **image drift**: mean brightness, saturation, the flat-pixel fraction (0-1)
  or the JPEG bytes beyond a flat image's (relative) moved more than
  ``image_drift`` from the first evaluation.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from flowopd.errors import ConfigError
from flowopd.train_config import TrainConfig

EVALS_DIR = "evals"
WATCH_FILE = "watch.json"
IMAGE_STATS = ("brightness", "saturation", "flat_fraction", "jpeg_bytes")
JPEG_FLOOR = 64.0  # bytes: a relative change of JPEG detail is measured against at least this (flat images have ~0)


def eval_folder(out: Path, step: int) -> Path:
    """``RUN/evals/step-NNNNNN``: the evaluation run of that step (``flowopd report`` reads it)."""
    return Path(out) / EVALS_DIR / f"step-{step:06d}"


def eval_lora(out: Path, step: int) -> Path:
    """``RUN/evals/loras/step-NNNNNN``: the EMA LoRA that step evaluated (``flowopd eval --model`` takes it)."""
    return Path(out) / EVALS_DIR / "loras" / f"step-{step:06d}"


def eval_config(cfg: TrainConfig, model: str):
    """The runner's :class:`EvalConfig` for ``cfg.eval`` on ``model``: the suites, or the prompts with their rewards
    (default: the trained ones)."""
    from flowopd.benchmarks.runner import EvalConfig

    ev = cfg.eval
    rewards = list(ev.rewards or cfg.rewards) if ev.prompts is not None else []
    return EvalConfig(
        suites=[] if ev.prompts is not None else list(ev.suites),
        model=model,
        limit=ev.limit,
        images_per_prompt=ev.images_per_prompt,
        steps=ev.steps,
        cfg=ev.cfg,
        resolution=ev.resolution,
        seed=ev.seed,
        batch_size=ev.batch_size,
        strict=True,
        prompts=ev.prompts,
        rewards=rewards,
    )


def check_eval_plan(cfg: TrainConfig) -> list[str]:
    """Refuse, before any model loads, an eval section that cannot run on this base; returns warnings to print."""
    if not cfg.eval_every:
        return []
    from flowopd.benchmarks.runner import plan_eval
    from flowopd.errors import FlowOPDError
    from flowopd.models import resolve_model
    from flowopd.reward_models import get_reward_class

    ev = cfg.eval
    for name in [*ev.rewards, *(ev.alarms.gold or [])]:
        try:
            get_reward_class(name)
        except FlowOPDError as exc:
            raise ConfigError(f"eval: {exc}") from None
    try:
        plan = plan_eval(ev.suites if ev.prompts is None else [], resolve_model(cfg.model), ev.prompts, eval_config(cfg, cfg.model).rewards)
    except FlowOPDError as exc:
        raise ConfigError(f"eval: {exc}") from None
    if plan.skipped:
        name, reason = next(iter(plan.skipped.items()))
        raise ConfigError(f"eval: suite {name} cannot run here: {reason}; name another in eval.suites (`flowopd suites list`)")
    warnings = list(plan.warnings)
    if cfg.eval_every > cfg.steps:
        warnings.append(
            f"eval_every {cfg.eval_every} is more than the run's {cfg.steps} steps: it evaluates before step 1 and at the end only"
        )
    return warnings


def proxy_rewards(cfg: TrainConfig) -> list[str]:
    """The rewards a GRPO run climbs (an OPD run climbs none: its signal is its teachers')."""
    if cfg.objective != "grpo":
        return []
    names = dict.fromkeys([*cfg.rewards, *(r for weights in cfg.task_rewards.values() for r in weights)])
    return list(names)


# ------------------------------------------------------------------ per-sample scores and image statistics


def sample_scores(folder: Path) -> dict[tuple, dict[str, float]]:
    """(suite, prompt, image index, seed) -> reward -> normalised score, from an evaluation folder's samples."""
    from flowopd.runinfo import parse_jsonl

    out: dict[tuple, dict[str, float]] = {}
    for path in sorted(Path(folder).glob("*/samples.jsonl")):
        for _, rec in parse_jsonl(path, path.read_text(), "evaluate the step again (delete its folder and --resume)"):
            scores = {n: s.get("normalized") for n, s in rec["scores"].items()}
            out[(rec["suite"], rec["prompt"], rec["index"], rec["seed"])] = {
                n: float(v) for n, v in scores.items() if v is not None and not math.isnan(float(v))
            }
    return out


def image_statistics(images: list[np.ndarray]) -> dict[str, float]:
    """Means over uint8 HWC images: brightness and saturation (0-1), the fraction of flat pixels (every channel within 2
    of the right and lower neighbours), and the JPEG bytes (quality 75) beyond those of a flat image of the same size."""
    from PIL import Image

    def jpeg(arr: np.ndarray) -> int:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=75)
        return buf.tell()

    stats = {k: [] for k in IMAGE_STATS}
    for im in images:
        x = im.astype(np.float32) / 255.0
        hi, lo = x.max(axis=-1), x.min(axis=-1)
        stats["brightness"].append(float(x.mean()))
        stats["saturation"].append(float(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0).mean()))
        right = np.abs(np.diff(im.astype(np.int16), axis=1)).max(axis=-1)[:-1, :] <= 2
        down = np.abs(np.diff(im.astype(np.int16), axis=0)).max(axis=-1)[:, :-1] <= 2
        stats["flat_fraction"].append(float((right & down).mean()))
        stats["jpeg_bytes"].append(float(jpeg(im) - jpeg(np.full_like(im, 128))))
    return {k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()}


def folder_image_statistics(folder: Path) -> dict[str, float]:
    from PIL import Image

    images = []
    for path in sorted((Path(folder) / "images").glob("*.png")):
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return image_statistics(images)


# ------------------------------------------------------------------ alarms


def paired_change(before: dict[tuple, dict[str, float]], after: dict[tuple, dict[str, float]], reward: str) -> tuple[float, float, int]:
    """Mean paired change of ``reward`` over the samples both evaluations scored with it, the 95% half-width, and n."""
    diffs = [after[k][reward] - before[k][reward] for k in after if k in before and reward in after[k] and reward in before[k]]
    if not diffs:
        return 0.0, math.inf, 0
    d = np.asarray(diffs)
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return float(d.mean()), half, len(d)


def hacking_alarms(
    before: dict[tuple, dict[str, float]], after: dict[tuple, dict[str, float]], proxies: list[str], gold: list[str], margin: float
) -> list[str]:
    """ "proxy up, gold down": every gold reward that fell by more than ``margin`` (interval below 0) while a proxy rose."""
    rises = {p: paired_change(before, after, p) for p in proxies}
    risen = {p: c for p, c in rises.items() if c[2] and c[0] > 0}
    if not risen:
        return []
    proxy, (up, _, _) = max(risen.items(), key=lambda kv: kv[1][0])
    out = []
    for g in gold:
        mean, half, n = paired_change(before, after, g)
        if n and mean < -margin and mean + half < 0:
            out.append(f"{proxy} rose {up:+.3f} while {g} fell {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] (n={n})")
    return out


def drift_alarms(first: dict[str, float], now: dict[str, float], limit: float) -> list[str]:
    """Image statistics that moved more than ``limit`` from the first evaluation (JPEG bytes: relative change)."""
    if limit <= 0 or not first:
        return []
    out = []
    for key in IMAGE_STATS:
        a, b = first.get(key), now.get(key)
        if a is None or b is None:
            continue
        change = (b - a) / max(abs(a), JPEG_FLOOR) if key == "jpeg_bytes" else b - a
        if abs(change) > limit:
            out.append(f"images drifted: {key} {a:.3g} -> {b:.3g}")
    return out


def gold_rewards(cfg: TrainConfig, scores: dict[tuple, dict[str, float]]) -> list[str]:
    """``eval.alarms.gold``, or every reward the evaluation scored that the run does not train on."""
    if cfg.eval.alarms.gold is not None:
        return list(cfg.eval.alarms.gold)
    proxies = set(proxy_rewards(cfg))
    return sorted({n for s in scores.values() for n in s} - proxies)


# ------------------------------------------------------------------ the watcher


class Watcher:
    """Runs the evaluations of a :class:`flowopd.trainer.Trainer` and keeps the alarms they raise."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.cfg: TrainConfig = trainer.cfg
        self.out = Path(trainer.out)
        self.alarms: list[tuple[int, str]] = []  # (step, message), in order
        self.stop = False
        self.rewards: dict[str, Any] = {}  # reward models loaded by the first evaluation, reused by the next ones

    def due(self, step: int) -> bool:
        every = self.cfg.eval_every
        return bool(every) and (step % every == 0 or step == self.cfg.steps)

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate the EMA weights at ``step`` (or read back a finished evaluation); returns ``eval/...`` metrics."""
        folder = eval_folder(self.out, step)
        acc = self.trainer.accelerator
        t0 = time.time()
        if not (folder / WATCH_FILE).is_file():
            self._run(folder, eval_lora(self.out, step))
            if acc.is_main_process:
                self._record(folder, step, time.time() - t0)
            acc.wait_for_everyone()
        record = json.loads((folder / WATCH_FILE).read_text())
        for message in record["alarms"]:
            self.alarms.append((step, message))
        self.stop = bool(record["alarms"]) and self.cfg.eval.alarms.on_alarm == "stop"
        summary = json.loads((folder / "summary.json").read_text())
        metrics = {f"eval/{k}": float(v["mean"]) for k, v in summary["metrics"].items() if isinstance(v, dict) and "mean" in v}
        metrics.update({f"eval/image/{k}": v for k, v in record["image_stats"].items()})
        metrics["eval/seconds"] = float(record["seconds"])
        metrics["alarms"] = float(len(record["alarms"]))
        return metrics

    def _run(self, folder: Path, lora: Path) -> None:
        """Every process: the EMA weights in the live adapter, the LoRA written by the main one, the runner on all."""
        import torch

        from flowopd.benchmarks.runner import run_eval

        trainer, acc = self.trainer, self.trainer.accelerator
        transformer = trainer.backbone.transformer
        with trainer.ema_weights(), torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
            if acc.is_main_process:
                trainer.write_lora(lora)
            acc.wait_for_everyone()
            was_training = transformer.training
            transformer.eval()
            try:
                config = eval_config(self.cfg, str(lora))
                run_eval(config, folder, backbone=trainer.backbone, keep_processes=True, rewards=self.rewards)
            finally:
                transformer.train(was_training)

    def _record(self, folder: Path, step: int, seconds: float) -> None:
        """Main process: the image statistics and the alarms against earlier evaluations, into ``watch.json``."""
        from flowopd.runinfo import write_json_atomic

        stats = folder_image_statistics(folder)
        earlier = sorted(p for p in (self.out / EVALS_DIR).glob("step-*") if (p / WATCH_FILE).is_file() and p.name < folder.name)
        alarms: list[str] = []
        window = self.cfg.eval.alarms.window
        if earlier:
            scores = sample_scores(folder)
            reference = earlier[-window] if len(earlier) >= window else earlier[0]
            proxies = proxy_rewards(self.cfg)
            alarms += hacking_alarms(sample_scores(reference), scores, proxies, gold_rewards(self.cfg, scores), self.cfg.eval.alarms.margin)
            alarms = [f"{m} since {reference.name}" for m in alarms]
            first = json.loads((earlier[0] / WATCH_FILE).read_text())["image_stats"]
            alarms += [f"{m} since {earlier[0].name}" for m in drift_alarms(first, stats, self.cfg.eval.alarms.image_drift)]
        write_json_atomic(folder / WATCH_FILE, {"step": step, "seconds": round(seconds, 2), "image_stats": stats, "alarms": alarms})


def _cuda_devices() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
