"""The ``mini`` evaluation suite: the four mini tasks on held-out prompts, every applicable reward on every image.

Primary metrics (one per task, like the paper's Table 2):

- ``compose``: GenEval-style: strict accuracy per tag, overall = unweighted mean of the six tags;
- ``text``: mean OCR reward (and exact-match accuracy);
- ``preference``: mean preference score in [0, 1];
- ``quality``: mean quality score in [1, 5].

Secondary rewards are scored on every image where they apply, so a reward
that is quietly hacked shows up in the others. Each image's seed depends
only on (prompt, image index, suite seed), so results do not depend on order
or batching; a prompt that recurs in a task (the mini world has only three
single-object prompts) continues its image indices, so no two images share a seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flowopd.benchmarks.stats import mean_ci, mean_of_means_ci
from flowopd.models import MINI_SAMPLING
from flowopd.teachers import MINI_TASK_REWARDS

SECONDARY = {
    "compose": ["mini_preference", "mini_quality"],
    "text": ["mini_preference", "mini_quality"],
    "preference": ["mini_quality"],
    "quality": ["mini_geneval", "mini_preference"],
}


class MiniSuiteConfig(BaseModel):
    """What the mini suite samples and how."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("mini-base", description="mini-base or a model folder")
    prompts_per_task: int = Field(48, ge=1, description="prompts per task (compose: per tag)")
    images_per_prompt: int = Field(1, ge=1)
    split: str = Field("test", pattern="^(test|train|all)$", description="held-out (test) or training prompts")
    steps: int = Field(MINI_SAMPLING["steps"], ge=1, description="ODE sampling steps")
    cfg: float = Field(MINI_SAMPLING["cfg"], ge=1.0, description="classifier-free guidance scale")
    shift: float = Field(MINI_SAMPLING["shift"], gt=0, description="flow-match schedule shift")
    seed: int = 0
    batch_size: int = Field(64, ge=1)


def image_seed(prompt: str, index: int, seed: int) -> int:
    """A stable seed for (prompt, image index, suite seed)."""
    return int(hashlib.sha256(f"{seed}|{index}|{prompt}".encode()).hexdigest()[:8], 16)


def suite_prompts(cfg: MiniSuiteConfig) -> list[tuple[str, Any]]:
    """(task, PromptRecord) pairs: compose per tag, the other tasks whole."""
    from flowopd.mini import world

    items: list[tuple[str, Any]] = []
    for t_index, task in enumerate(world.TASKS):
        if task == "compose":
            for g_index, tag in enumerate(world.COMPOSE_TAGS):
                recs = world.make_prompts("compose", cfg.prompts_per_task, 10_000 + 100 * cfg.seed + g_index, split=cfg.split, tag=tag)
                items += [(task, r) for r in recs]
        else:
            recs = world.make_prompts(task, cfg.prompts_per_task, 20_000 + 100 * cfg.seed + t_index, split=cfg.split)
            items += [(task, r) for r in recs]
    return items


def suite_jobs(cfg: MiniSuiteConfig) -> list[tuple[str, Any, int]]:
    """(task, record, image index) per image; a prompt that recurs continues its image indices, so every image has its own seed."""
    seen: dict[str, int] = {}
    jobs = []
    for task, rec in suite_prompts(cfg):
        first = seen.get(rec.prompt, 0)
        seen[rec.prompt] = first + cfg.images_per_prompt
        jobs += [(task, rec, first + i) for i in range(cfg.images_per_prompt)]
    return jobs


def run_mini_suite(cfg: MiniSuiteConfig, out: Path, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Sample, score and summarise; writes ``summary.json``, ``samples.jsonl`` and ``images/`` into ``out`` atomically."""
    import torch
    from PIL import Image

    from flowopd.models import load_backbone
    from flowopd.reward_models import load_reward
    from flowopd.runinfo import atomic_dir, check_output_dir, run_info, write_json_atomic
    from flowopd.sampling import sample_ode

    check_output_dir(out, "summary.json")  # refuse a user's folder before any sampling
    backbone = load_backbone(cfg.model)
    jobs = suite_jobs(cfg)
    seeds = [image_seed(rec.prompt, i, cfg.seed) for _, rec, i in jobs]
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("sampling", done, len(jobs))

    images = sample_ode(
        backbone,
        [rec.prompt for _, rec, _ in jobs],
        seeds,
        steps=cfg.steps,
        cfg=cfg.cfg,
        shift=cfg.shift,
        batch_size=cfg.batch_size,
        progress=tick,
    )
    rewards = {name: load_reward(name) for name in sorted(set(MINI_TASK_REWARDS.values()))}
    records: list[dict[str, Any]] = [
        {"task": task, "prompt": rec.prompt, "metadata": rec.metadata, "index": i, "seed": s, "scores": {}}
        for (task, rec, i), s in zip(jobs, seeds)
    ]
    for t_index, task in enumerate(MINI_TASK_REWARDS):
        idx = [k for k, (t, _, _) in enumerate(jobs) if t == task]
        if progress:
            progress(f"scoring {task}", t_index, len(MINI_TASK_REWARDS))
        for name in [MINI_TASK_REWARDS[task], *SECONDARY[task]]:
            scores = rewards[name].score(images[idx], [records[k]["prompt"] for k in idx], [records[k]["metadata"] for k in idx])
            for k, rec in zip(idx, scores.to_records()):
                records[k]["scores"][name] = rec
    if progress:
        progress("scored", len(MINI_TASK_REWARDS), len(MINI_TASK_REWARDS))
    summary = summarise(records)
    summary["run"] = run_info(cfg.model_dump(), cfg.seed)
    with atomic_dir(out, marker="summary.json") as tmp:
        for k, rec in enumerate(records):
            rel = Path("images") / rec["task"] / f"{k:05d}.png"
            (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
            arr = (images[k].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(tmp / rel)
            rec["image"] = str(rel)
        with open(tmp / "samples.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        write_json_atomic(tmp / "summary.json", summary)
    return summary


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task primary metrics, per-tag GenEval accuracies, and every secondary reward's mean."""
    from flowopd.mini.world import COMPOSE_TAGS

    metrics: dict[str, Any] = {}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    compose = by_task.get("compose", [])
    if compose:
        tags = {
            t: [float(r["scores"]["mini_geneval"]["details"]["correct"]) for r in compose if r["metadata"]["tag"] == t]
            for t in COMPOSE_TAGS
        }
        metrics["compose/geneval_overall"] = mean_of_means_ci([v for v in tags.values() if v])
        for t, v in tags.items():
            if v:
                metrics[f"compose/geneval_{t}"] = mean_ci(v)
    for task, rows in by_task.items():
        for name in rows[0]["scores"]:
            metrics[f"{task}/{name}"] = mean_ci([r["scores"][name]["raw"] for r in rows])
    if by_task.get("text"):
        metrics["text/exact_match"] = mean_ci([float(r["scores"]["mini_ocr"]["raw"] == 1.0) for r in by_task["text"]])
    headline = {
        "compose": "compose/geneval_overall",
        "text": "text/mini_ocr",
        "preference": "preference/mini_preference",
        "quality": "quality/mini_quality",
    }
    return {"suite": "mini", "headline": {t: k for t, k in headline.items() if k in metrics}, "metrics": metrics, "n_images": len(records)}


HEADLINE_REWARD = {"compose": "mini_geneval", "text": "mini_ocr", "preference": "mini_preference", "quality": "mini_quality"}


def headline_values(records: list[dict[str, Any]]) -> dict[str, dict[tuple, tuple[str, float]]]:
    """Per headline metric, the per-image values it aggregates: ``{(prompt, index, seed): (group, value)}``.

    Compose counts the strict GenEval verdict and averages within tags (group =
    tag), the others average the task reward's raw score. Two runs of the suite
    on the same prompts and seeds pair up image by image through these keys.
    """
    out: dict[str, dict[tuple, tuple[str, float]]] = {}
    for r in records:
        task = r["task"]
        score = r["scores"][HEADLINE_REWARD[task]]
        if task == "compose":
            key, group, value = "compose/geneval_overall", r["metadata"]["tag"], float(score["details"]["correct"])
        else:
            key, group, value = f"{task}/{HEADLINE_REWARD[task]}", task, float(score["raw"])
        out.setdefault(key, {})[(r["prompt"], r["index"], r["seed"])] = (group, value)
    return out
