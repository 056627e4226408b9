"""Evaluation suites: a prompt set, images per prompt, reward models, and how their scores aggregate (SPEC section 8).

A suite turns prompts into *jobs* (one per image, with a seed that depends
only on the prompt, the image index and the suite seed), names the rewards
that score each job, and aggregates the scored records into metrics with
their n and a 95% confidence interval. Metric keys are ``<suite>/<metric>``.

| suite | prompts | images/prompt | rewards | metrics |
|---|---|---|---|---|
| ``mini`` | mini world, held-out | 1 | the four mini rewards on every task they apply to | per task; GenEval-style per tag |
| ``geneval`` | GenEval 553 | 4 | ``geneval`` (mmdet Mask2Former) | overall = mean of 6 tag accuracies; per tag; image and prompt accuracy |
| ``geneval@hf-m2f`` | GenEval 553 | 4 | ``geneval@hf-m2f`` | the same, a different detector: a different metric |
| ``ocr`` | Flow-GRPO OCR test | 1 | ``ocr`` | accuracy = mean(1 - NED); exact match |
| ``pickscore`` | Flow-GRPO PickScore test | 1 | ``pickscore_v1`` | mean raw PickScore |
| ``deqa`` | DrawBench | 1 | ``deqa`` | mean DeQA (1-5) |
| ``quality`` | DrawBench | 1 | ImageReward, Aesthetic, UnifiedReward, HPS v2.1, QwenVL judge | the paper's Table 4, each reward's mean |
| ``hpsv2`` | HPS v2 benchmark, 4 styles x 800 | 1 | ``hpsv2`` | per style: mean of 10 chunk means (x100), and their average |
| ``t2i-compbench`` | T2I-CompBench++ val, 8 x 300 | 10 | see :data:`T2I_METRIC_MODELS` | per category |
| ``geneval2`` | GenEval 2, 800 (100 per atom count 3-10) | 1 | ``geneval2_soft_tifa`` (Qwen3-VL-8B-Instruct) | Soft-TIFA AM and GM x 100; per skill; per atom count |
| ``dpg-bench`` | DPG-Bench, 1065 | 4 (the 2x2 tiles) | ``dpg_vqa@served-vlm`` (not the official mPLUG) | ``<metric>@served-vlm``: overall, L1/L2 x 100 (:mod:`flowopd.benchmarks.dpg_bench`) |
| ``oneig`` | OneIG-Bench EN, 695 + 200 | 4 (the 2x2 tiles) | ``oneig_alignment``, ``oneig_text`` (Qwen2.5-VL-7B served) | alignment (pooled, per folder), text and its ED/CR/WAC (:mod:`flowopd.benchmarks.oneig`) |
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from flowopd.benchmarks.stats import mean_ci, mean_of_means_ci
from flowopd.errors import InputError
from flowopd.registry import Registry

WORLD_REASON = "needs a real text-to-image model (--model sd3:<hub id or folder>); a mini model knows only the mini vocabulary"
Record = dict[str, Any]
Metrics = dict[str, dict[str, Any]]


def image_seed(prompt: str, index: int, seed: int) -> int:
    """A stable seed for (prompt, image index, suite seed): results do not depend on order, batching or sharding."""
    return int(hashlib.sha256(f"{seed}|{index}|{prompt}".encode()).hexdigest()[:8], 16)


@dataclasses.dataclass(frozen=True)
class Job:
    """One image to make and score."""

    task: str
    prompt: str
    metadata: dict[str, Any]
    index: int
    seed: int


def jobs_for(items: Sequence[tuple[str, str, dict[str, Any]]], images_per_prompt: int, seed: int) -> list[Job]:
    """(task, prompt, metadata) -> ``images_per_prompt`` jobs each; a prompt that recurs continues its image indices."""
    seen: dict[str, int] = {}
    jobs = []
    for task, prompt, meta in items:
        first = seen.get(prompt, 0)
        seen[prompt] = first + images_per_prompt
        jobs += [Job(task, prompt, meta, first + i, image_seed(prompt, first + i, seed)) for i in range(images_per_prompt)]
    return jobs


@dataclasses.dataclass(frozen=True)
class Suite:
    """Prompt set + images per prompt + reward models + aggregation."""

    name: str
    description: str
    world: str  # "mini" or "real": which models it applies to
    images_per_prompt: int
    rewards: tuple[str, ...]  # every one is needed
    optional_rewards: tuple[str, ...] = ()  # scored where available (at least one is needed when there are no required ones)
    prompt_sets: tuple[str, ...] = ()  # named sets (benchmarks/prompt_sets.py)
    group_key: str | None = None  # the metadata key ``--limit`` counts prompts within (a tag, a style, a category)
    notes: tuple[str, ...] = ()
    build_items: Callable[[Suite, int | None, int], list[tuple[str, str, dict[str, Any]]]] | None = None
    aggregate: Callable[[Suite, list[Record], Sequence[str]], Metrics] | None = None
    rewards_for: Callable[[Job, Sequence[str]], list[str]] | None = None
    headline: Callable[[Metrics], dict[str, str]] | None = None  # task -> its primary metric's key (summary.json "headline")

    def items(self, limit: int | None, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(task, prompt, metadata) per prompt, at most ``limit`` per group (tag, style, category or task)."""
        if self.build_items is not None:
            return self.build_items(self, limit, seed)
        from flowopd.benchmarks.prompt_sets import PROMPT_SETS

        out = []
        for name in self.prompt_sets:
            counts: dict[Any, int] = {}
            for p in PROMPT_SETS[name].load():
                group = p.metadata.get(self.group_key) if self.group_key else name
                if limit is not None and counts.get(group, 0) >= limit:
                    continue
                counts[group] = counts.get(group, 0) + 1
                out.append((p.task or "", p.text, p.metadata))
        return out

    def jobs(self, limit: int | None, seed: int, images_per_prompt: int | None = None) -> list[Job]:
        return jobs_for(self.items(limit, seed), images_per_prompt or self.images_per_prompt, seed)

    def job_rewards(self, job: Job, available: Sequence[str]) -> list[str]:
        """The rewards that score this job (of those available)."""
        if self.rewards_for is not None:
            return self.rewards_for(job, available)
        return [r for r in (*self.rewards, *self.optional_rewards) if r in available]

    def unavailable_reason(self, world: str) -> str | None:
        """Why this suite cannot run for a model of ``world`` with the present prompts and weights, or None."""
        if world != self.world:
            if self.world == "mini":
                return "runs on mini-world models only (the mini vocabulary and rewards)"
            return WORLD_REASON
        return self.missing_inputs()

    def missing_inputs(self) -> str | None:
        """Missing prompt files and reward weights, each with the command that fetches it; None when nothing is missing."""
        from flowopd.benchmarks.prompt_sets import PROMPT_SETS

        missing = []
        for group in dict.fromkeys(name.split("/")[0] for name in self.prompt_sets):
            absent = [n for n in self.prompt_sets if n.split("/")[0] == group and not PROMPT_SETS[n].present()]
            if absent:
                missing.append(PROMPT_SETS[absent[0]].missing_reason(group))
        statuses = reward_statuses([*self.rewards, *self.optional_rewards])
        missing += [f"reward {r}: {statuses[r][1]}" for r in self.rewards if not statuses[r][0]]
        if self.optional_rewards and not self.rewards and not any(statuses[r][0] for r in self.optional_rewards):
            missing.append("none of its rewards is available: " + "; ".join(f"{r}: {statuses[r][1]}" for r in self.optional_rewards))
        return "; ".join(missing) or None

    def available_rewards(self) -> list[str]:
        statuses = reward_statuses([*self.rewards, *self.optional_rewards])
        return [r for r, (ok, _) in statuses.items() if ok]


def reward_statuses(names: Sequence[str]) -> dict[str, tuple[bool, str | None]]:
    """``{name: (available, reason)}`` without loading any weights."""
    from flowopd.reward_models import get_reward_class

    return {n: get_reward_class(n).weights_status() for n in names}


# ------------------------------------------------------------------ aggregation helpers


def _ok(records: list[Record], reward: str) -> list[Record]:
    """Records whose ``reward`` score did not fail (a failed image is left out of the metric, and counted)."""
    return [
        r for r in records if reward in r["scores"] and not r["scores"][reward].get("failed") and r["scores"][reward]["raw"] is not None
    ]


def _raw(records: list[Record], reward: str, scale: float = 1.0) -> list[float]:
    return [float(r["scores"][reward]["raw"]) * scale for r in _ok(records, reward)]


def geneval_metrics(records: list[Record], reward: str) -> Metrics:
    """GenEval's summary (``summary_scores.py``): per-tag accuracy, overall = mean of the tag accuracies, image and prompt accuracy.

    Accuracy is the official strict rule (``details.correct``), not the training reward's partial credit. A prompt is
    correct when any of its images is.
    """
    ok = _ok(records, reward)
    tags: dict[str, list[float]] = {}
    prompts: dict[str, list[float]] = {}
    for r in ok:
        correct = float(bool(r["scores"][reward]["details"]["correct"]))
        tags.setdefault(r["metadata"]["tag"], []).append(correct)
        prompts.setdefault(repr((r["prompt"], sorted(r["metadata"].items()))), []).append(correct)
    if not ok:
        return {}
    metrics: Metrics = {"overall": mean_of_means_ci(list(tags.values()))}
    for tag, values in sorted(tags.items()):
        metrics[tag] = mean_ci(values)
    metrics["image_accuracy"] = mean_ci([v for values in tags.values() for v in values])
    metrics["prompt_accuracy"] = mean_ci([float(max(v)) for v in prompts.values()])
    return metrics


def chunked_mean_ci(values: Sequence[float], chunks: int = 10) -> dict[str, Any]:
    """The HPS v2 benchmark's score: the mean of ``chunks`` consecutive chunk means, with a 95% interval over the chunk means.

    With fewer values than chunks every value is its own chunk; ``n`` is the number of images.
    """
    import numpy as np

    parts = [p for p in np.array_split(np.asarray(values, dtype=float), min(chunks, len(values))) if len(p)] if values else []
    out = mean_ci([float(p.mean()) for p in parts], proportion=False)
    out["n"] = len(values)
    out["chunks"] = len(parts)
    return out


def soft_tifa_metrics(records: list[Record], reward: str) -> Metrics:
    """GenEval 2's numbers (evaluation.py ``main``, soft_tifa_analysis.py), x 100, each with its n and 95% interval.

    ``soft_tifa_am`` / ``soft_tifa_gm``: the mean over images of each prompt's arithmetic / geometric mean of its
    question scores; ``skill/<skill>``: the mean of every question of that skill, pooled over prompts (a micro
    average); ``atoms/<k>``: the mean GM of the prompts with atom count ``k``. Failed images are left out.
    """
    from flowopd.reward_models.geneval2 import SKILLS, arithmetic_mean, geometric_mean

    ok = _ok(records, reward)
    if not ok:
        return {}
    per_image = [(r["scores"][reward]["details"]["question_scores"], r["metadata"]) for r in ok]
    bounds = (0.0, 100.0)
    metrics: Metrics = {
        "soft_tifa_am": mean_ci([100 * arithmetic_mean(q) for q, _ in per_image], proportion=False, bounds=bounds),
        "soft_tifa_gm": mean_ci([100 * geometric_mean(q) for q, _ in per_image], proportion=False, bounds=bounds),
    }
    for skill in SKILLS:
        values = [100 * s for q, meta in per_image for s, sk in zip(q, meta["skills"]) if sk == skill]
        if values:
            metrics[f"skill/{skill}"] = mean_ci(values, proportion=False, bounds=bounds)
    for atoms in sorted({meta["atom_count"] for _, meta in per_image}):
        values = [100 * geometric_mean(q) for q, meta in per_image if meta["atom_count"] == atoms]
        metrics[f"atoms/{atoms}"] = mean_ci(values, proportion=False, bounds=bounds)
    return metrics


def _geneval2_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    return soft_tifa_metrics(records, suite.rewards[0])


# ------------------------------------------------------------------ the suites


def _geneval_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    return geneval_metrics(records, suite.rewards[0])


def _ocr_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    raws = _raw(records, "ocr")
    accuracy = mean_ci(raws, proportion=False, bounds=(0.0, 1.0))  # 1 - normalised edit distance
    return {"accuracy": accuracy, "exact_match": mean_ci([float(v == 1.0) for v in raws])} if raws else {}


def _raw_range(reward: str) -> tuple[float, float] | None:
    """A reward's raw range, which its mean's interval stays inside (None: unbounded)."""
    from flowopd.reward_models import get_reward_class

    return get_reward_class(reward).raw_range


def _mean_of(reward: str, key: str) -> Callable[[Suite, list[Record], Sequence[str]], Metrics]:
    def aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
        raws = _raw(records, reward)
        return {key: mean_ci(raws, proportion=False, bounds=_raw_range(reward))} if raws else {}

    return aggregate


QUALITY_METRICS = {  # the paper's Table 4, in its order
    "imagereward_v1": "imagereward",
    "aesthetic_laion_v2": "aesthetic",
    "unifiedreward": "unifiedreward",
    "hpsv2.1": "hpsv2.1",
    "qwenvl_judge": "qwenvl",
}


def _quality_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    return {
        key: mean_ci(_raw(records, r), proportion=False, bounds=_raw_range(r))
        for r, key in QUALITY_METRICS.items()
        if r in rewards and _raw(records, r)
    }


def _hpsv2_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    from flowopd.benchmarks.prompt_sets import HPS_STYLES

    metrics: Metrics = {}
    for style in HPS_STYLES:
        values = _raw([r for r in records if r["metadata"].get("style") == style], "hpsv2", scale=100.0)
        if values:
            metrics[style] = chunked_mean_ci(values)
    if metrics:
        metrics["average"] = mean_of_metrics(list(metrics.values()))
    return metrics


def mean_of_metrics(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The plain mean of independent metrics, its 95% half-width the root sum of squared half-widths over their count."""
    half = math.sqrt(sum(((m["ci95"][1] - m["ci95"][0]) / 2) ** 2 for m in parts)) / len(parts)
    mean = sum(m["mean"] for m in parts) / len(parts)
    return {"mean": mean, "n": sum(m["n"] for m in parts), "ci95": [mean - half, mean + half]}


# T2I-CompBench++ categories -> the rewards that compute them, in order of preference, each with how its raw score
# becomes the category's score. The official metric models: BLIP-VQA (color, shape, texture), UniDet (spatial,
# numeracy; + depth for 3d_spatial), CLIP ViT-B/32 similarity (non_spatial), and the 3-in-1 average (complex). A reward
# that is another runtime of the official model, or a stand-in for it, names its metric apart: "<category>@<what
# differs>" (color@np-rules; spatial@owlv2: OWLv2 in place of UniDet, which does not install). A category with no
# available reward makes no images.
T2I_METRIC_MODELS: dict[str, tuple[tuple[str, float], ...]] = {
    "color": (("t2i_blip_vqa", 1.0), ("t2i_blip_vqa@np-rules", 1.0)),
    "shape": (("t2i_blip_vqa", 1.0), ("t2i_blip_vqa@np-rules", 1.0)),
    "texture": (("t2i_blip_vqa", 1.0), ("t2i_blip_vqa@np-rules", 1.0)),
    "spatial": (("t2i_spatial@owlv2", 1.0),),
    "3d_spatial": (("t2i_3d_spatial@owlv2-dpt", 1.0),),
    "numeracy": (("t2i_numeracy@owlv2", 1.0),),
    "non_spatial": (("clipscore@vit-b-32", 0.01),),  # CLIP ViT-B/32 cosine = logits_per_image / 100, the official score
    "complex": (("t2i_complex@owlv2", 1.0),),
}
T2I_OFFICIAL_MODELS = {
    "color": "BLIP-VQA",
    "shape": "BLIP-VQA",
    "texture": "BLIP-VQA",
    "spatial": "UniDet",
    "3d_spatial": "UniDet + depth",
    "numeracy": "UniDet",
    "non_spatial": "CLIP ViT-B/32",
    "complex": "3-in-1 (BLIP-VQA, UniDet, CLIP)",
}
# the official metric model of each category, by reward name; any other reward's metric is named apart
T2I_OFFICIAL_REWARDS = {"t2i_blip_vqa", "clipscore@vit-b-32"}
T2I_REWARDS = tuple(dict.fromkeys(r for models in T2I_METRIC_MODELS.values() for r, _ in models))


def _t2i_choice(category: str, available: Sequence[str]) -> tuple[str, str, float] | None:
    """(metric key, reward, scale) a category is computed with: its first available reward, or None."""
    for reward, scale in T2I_METRIC_MODELS[category]:
        if reward in available:
            official = reward in T2I_OFFICIAL_REWARDS or "@" not in reward
            return (category if official else f"{category}@{reward.split('@', 1)[1]}"), reward, scale
    return None


def _t2i_items(suite: Suite, limit: int | None, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The categories some available reward computes (no images are made for a category nothing can score)."""
    from flowopd.benchmarks.prompt_sets import PROMPT_SETS

    available = suite.available_rewards()
    out = []
    for cat in T2I_METRIC_MODELS:
        if _t2i_choice(cat, available) is not None:
            out += [(p.task or "compose", p.text, p.metadata) for p in PROMPT_SETS[f"t2i-compbench/{cat}"].load()[:limit]]
    return out


def _t2i_rewards(job: Job, available: Sequence[str]) -> list[str]:
    choice = _t2i_choice(job.metadata["category"], available)
    return [choice[1]] if choice else []


def _t2i_aggregate(suite: Suite, records: list[Record], rewards: Sequence[str]) -> Metrics:
    metrics: Metrics = {}
    for cat in T2I_METRIC_MODELS:
        choice = _t2i_choice(cat, rewards)
        if choice is None:
            continue
        key, reward, scale = choice
        values = _raw([r for r in records if r["metadata"].get("category") == cat], reward, scale=scale)
        if values:
            metrics[key] = mean_ci(values, proportion=False)
    if all(cat in metrics for cat in T2I_METRIC_MODELS):  # the official mean: all eight, each by its official model
        metrics["mean"] = mean_of_metrics([metrics[cat] for cat in T2I_METRIC_MODELS])
    return metrics


def _t2i_notes() -> tuple[str, ...]:
    def names(models: tuple[tuple[str, float], ...]) -> str:
        return " or ".join(r for r, _ in models)

    done = [f"{c} with {names(m)} ({T2I_OFFICIAL_MODELS[c]})" for c, m in T2I_METRIC_MODELS.items() if m]
    todo = [f"{c} ({T2I_OFFICIAL_MODELS[c]})" for c, m in T2I_METRIC_MODELS.items() if not m]
    notes = [
        f"computed: {', '.join(done)}; a metric named <category>@<runtime> comes from a non-official runtime",
        "spatial, 3d_spatial, numeracy and complex use OWLv2 in place of UniDet (which does not install): the official "
        "formulas on other detections, named apart (spatial@owlv2, ...); the official mean needs all eight official metrics",
    ]
    if todo:
        notes.append(f"not computed yet (their metric model is not in the reward zoo): {', '.join(todo)}")
    return tuple(notes)


# the built-in suites on real models (the mini world's is a registry entry below)
BUILTIN_SUITES = (
    Suite(
        "geneval",
        "GenEval (553 prompts, 4 images each): strict accuracy per tag, overall = mean of the six tags",
        "real",
        4,
        ("geneval",),
        prompt_sets=("geneval",),
        group_key="tag",
        aggregate=_geneval_aggregate,
    ),
    Suite(
        "geneval@hf-m2f",
        "GenEval rules with the transformers Mask2Former detector (a different detector: a different metric)",
        "real",
        4,
        ("geneval@hf-m2f",),
        prompt_sets=("geneval",),
        group_key="tag",
        aggregate=_geneval_aggregate,
    ),
    Suite(
        "ocr",
        "visual text (Flow-GRPO OCR test split): mean OCR accuracy 1 - NED, and exact match",
        "real",
        1,
        ("ocr",),
        prompt_sets=("ocr",),
        aggregate=_ocr_aggregate,
    ),
    Suite(
        "pickscore",
        "human preference (Flow-GRPO PickScore test split): mean PickScore",
        "real",
        1,
        ("pickscore_v1",),
        prompt_sets=("pickscore",),
        aggregate=_mean_of("pickscore_v1", "pickscore"),
    ),
    Suite(
        "deqa",
        "image quality on DrawBench: mean DeQA score (1-5)",
        "real",
        1,
        ("deqa",),
        prompt_sets=("drawbench",),
        aggregate=_mean_of("deqa", "deqa"),
    ),
    Suite(
        "quality",
        "the paper's Table 4 on DrawBench: ImageReward, Aesthetic, UnifiedReward, HPS v2.1, QwenVL judge (those available)",
        "real",
        1,
        (),
        optional_rewards=tuple(QUALITY_METRICS),
        prompt_sets=("drawbench",),
        aggregate=_quality_aggregate,
        notes=("rewards that are not available are listed under skipped_metrics",),
    ),
    Suite(
        "hpsv2",
        "the HPS v2 benchmark (4 styles x 800 prompts): per style the mean of 10 chunk means of HPS v2 x 100",
        "real",
        1,
        ("hpsv2",),
        prompt_sets=tuple(f"hpsv2/{s}" for s in ("anime", "concept-art", "paintings", "photo")),
        group_key="style",
        aggregate=_hpsv2_aggregate,
    ),
    Suite(
        "geneval2",
        "GenEval 2 (800 prompts, 1 image each): Soft-TIFA AM and GM x 100 (Qwen3-VL-8B-Instruct), per skill and per atom count",
        "real",
        1,
        ("geneval2_soft_tifa",),
        prompt_sets=("geneval2",),
        group_key="atom_count",
        aggregate=_geneval2_aggregate,
        notes=("Soft-TIFA as facebookresearch/GenEval2 evaluation.py computes it; served: top-20 logprobs, see docs/eval.md",),
    ),
    Suite(
        "t2i-compbench",
        "T2I-CompBench++ validation prompts (10 images each), per category with its metric model where the zoo has it",
        "real",
        10,
        (),
        optional_rewards=T2I_REWARDS,
        prompt_sets=tuple(f"t2i-compbench/{c}" for c, m in T2I_METRIC_MODELS.items() if m),
        group_key="category",
        build_items=_t2i_items,
        aggregate=_t2i_aggregate,
        rewards_for=_t2i_rewards,
        notes=_t2i_notes(),
    ),
)


# the mini world's suite is a registry entry (flowopd/mini/suite.py), imported when used; plugins add theirs through
# the flowopd.suites entry-point group (examples/suite-plugin)
ENTRY_POINT_GROUP = "flowopd.suites"
SUITES: Registry[Suite] = Registry(
    "suite",
    {
        "mini": "flowopd.mini.suite:SUITE",
        **{s.name: s for s in BUILTIN_SUITES},
        "dpg-bench": "flowopd.benchmarks.dpg_bench:SUITE",
        "oneig": "flowopd.benchmarks.oneig:SUITE",
    },
    InputError,
    ENTRY_POINT_GROUP,
)


def get_suite(name: str) -> Suite:
    """A suite by name, or a one-line error with close matches."""
    return SUITES.get_or_explain(name, extra=("all",))
