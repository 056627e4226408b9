"""The evaluation runner: ``flowopd eval --suite NAME|all --model SPEC``.

For each suite it makes the jobs (prompt, image index, seed), samples the
images that are not on disk yet, scores them through the persistent score
cache, and aggregates. The run folder:

```
OUT/eval.json              what was asked (model, suites, limit, sampling, seed), written first
OUT/summary.json           every metric with its n and 95% CI, skipped suites and why, config, seeds, versions, git
OUT/images/<key>.png       each generated image, with OUT/images/<key>.json (prompt, seed, sampling, model)
OUT/<suite>/samples.jsonl  one record per image: prompt, metadata, index, seed, image path, every reward's score
OUT/<suite>/summary.json   the suite's metrics
```

An image's key hashes (prompt, seed, sampling), so suites that share prompts
share images (``deqa`` and ``quality`` both use DrawBench), and a run killed
midway resumes where it stopped: images already on disk are read back, scores
already in the cache are not recomputed. Under ``accelerate launch`` jobs are
split across processes (``jobs[rank::world]``); rank 0 merges and aggregates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.benchmarks.suites import SUITES, Job, Suite, get_suite
from flowopd.errors import FlowOPDError, InputError
from flowopd.models import ModelRef, resolve_model

Progress = Callable[[str, int, int], None]
MARKER = "eval.json"
CACHE_ENV = "FLOWOPD_CACHE_DIR"


def default_cache_path() -> Path:
    """``$FLOWOPD_CACHE_DIR/scores.sqlite`` (default ``~/.cache/flowopd``): shared by every evaluation of this user."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/flowopd").expanduser() / "scores.sqlite"


@dataclasses.dataclass
class EvalPlan:
    """Which suites run and which are skipped (with the reason) for one model."""

    model: ModelRef
    run: list[Suite]
    skipped: dict[str, str]
    warnings: list[str]


def plan_eval(suites: Sequence[str], model: ModelRef, prompts: str | None = None, rewards: Sequence[str] = ()) -> EvalPlan:
    """``all`` = every suite the model's world and the present prompts and weights allow; a named suite must be runnable.

    A suite named explicitly for a model of the other world runs anyway, with a
    warning (a mini model on real prompts sees mostly unknown words). With
    ``prompts`` (and ``rewards``) the one suite is built on the fly
    (:mod:`flowopd.benchmarks.custom_suite`).
    """
    if prompts is not None or rewards:
        from flowopd.benchmarks.custom_suite import custom_suite

        if prompts is None:
            raise InputError("--reward needs --prompts SET_OR_FILE (or `mini`): the prompts to score its images on")
        suite = custom_suite(prompts, rewards, model.world)
        reason = suite.missing_inputs()
        if reason:
            raise InputError(f"--prompts {prompts} --reward {' --reward '.join(rewards)} cannot run: {reason}")
        warn = [f"{model.label} is a mini-world model: most words of {prompts} are unknown to it"] if suite.world != model.world else []
        return EvalPlan(model, [suite], {}, warn)
    explicit = [s for s in suites if s != "all"]
    names = list(SUITES) if "all" in suites else explicit
    run, skipped, warnings = [], {}, []
    for name in dict.fromkeys(names):
        try:
            suite = get_suite(name)
        except InputError as exc:  # a plugin suite that cannot be imported: `all` runs the others
            if name in explicit:
                raise
            skipped[name] = str(exc)
            continue
        world_reason = suite.unavailable_reason(model.world) if suite.world != model.world else None
        if world_reason and name not in explicit:
            missing = suite.missing_inputs() if suite.world == "real" else None
            skipped[name] = world_reason + (f"; also {missing}" if missing else "")
            continue
        if world_reason:
            if suite.world == "mini":
                raise InputError(f"suite {name!r} {world_reason}; pick a real suite (see `flowopd eval --help`) for {model.spec}")
            warnings.append(f"{model.label} is a mini-world model: most words of the {name} prompts are unknown to it")
        reason = suite.missing_inputs()
        if reason:
            skipped[name] = reason
            continue
        run.append(suite)
    return EvalPlan(model, run, skipped, warnings)


@dataclasses.dataclass
class EvalConfig:
    """What ``flowopd eval`` was asked; with the seed it reproduces the run."""

    suites: list[str]
    model: str
    lora: str | None = None
    limit: int | None = None
    images_per_prompt: int | None = None
    steps: int | None = None
    cfg: float | None = None
    shift: float | None = None
    resolution: int | None = None
    negative_prompt: str = ""
    seed: int = 0
    batch_size: int = 16
    strict: bool = False
    prompts: str | None = None  # with rewards: one suite built on the fly (custom_suite)
    rewards: list[str] = dataclasses.field(default_factory=list)


def sampling_for(backbone: Any, cfg: EvalConfig) -> dict[str, Any]:
    """The model's evaluation sampling (mini: its shipped settings; SD3: 40 steps, CFG 4.5, 512 px) with the user's overrides."""
    if hasattr(backbone, "default_sampling"):
        base = dict(backbone.default_sampling)
    else:
        from flowopd.models import MINI_SAMPLING

        base = {**MINI_SAMPLING, "resolution": backbone.latent_shape[-1]}
    for key in ("steps", "cfg", "shift", "resolution"):
        if getattr(cfg, key) is not None:
            base[key] = getattr(cfg, key)
    base["negative_prompt"] = cfg.negative_prompt
    return base


def image_key(job: Job, sampling: dict[str, Any]) -> str:
    """Names an image by what decides its pixels (for one model): prompt, seed and sampling."""
    return hashlib.sha256(json.dumps([job.prompt, job.seed, sampling], sort_keys=True).encode()).hexdigest()[:20]


class ImageStore:
    """``OUT/images/<key>.png`` + ``.json``, each written atomically, so a killed run leaves only whole images."""

    def __init__(self, root: Path):
        self.root = root / "images"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path(key).is_file() and self.path(key).with_suffix(".json").is_file()

    def load(self, key: str) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path(key)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    def save(self, key: str, image: np.ndarray, meta: dict[str, Any]) -> None:
        from PIL import Image

        from flowopd.runinfo import atomic_file, write_json_atomic

        with atomic_file(self.path(key)) as f:
            Image.fromarray(image).save(f, format="PNG")
        write_json_atomic(self.path(key).with_suffix(".json"), meta)  # written last: its presence marks a whole image


def _check_out(out: Path, config: dict[str, Any], digest: str) -> None:
    """An existing run folder is resumed only when it holds an eval of the same model with the same settings.

    A folder without one finished image (a run that failed before its first,
    e.g. on a model that would not load) has nothing to keep: it is replaced.
    """
    from flowopd.runinfo import check_output_dir

    check_output_dir(out, MARKER)
    marker = out / MARKER
    if marker.is_file() and any((out / "images").glob("*.json")):
        old = json.loads(marker.read_text())
        if old.get("model_digest") != digest:
            raise InputError(f"{out} holds an evaluation of another model ({old.get('config', {}).get('model')}); pass a new --out")
        keep = {k: v for k, v in config.items() if k not in ("suites", "strict", "batch_size", "limit")}
        before = {k: v for k, v in old.get("config", {}).items() if k in keep}
        if before != {k: keep[k] for k in before}:
            diff = ", ".join(f"{k}: {before[k]!r} -> {keep[k]!r}" for k in before if before[k] != keep[k])
            raise InputError(f"{out} holds an evaluation with other settings ({diff}); pass a new --out or the same settings")


def run_eval(
    cfg: EvalConfig,
    out: str | Path,
    cache_path: str | Path | None = None,
    progress: Progress | None = None,
    backbone: Any | None = None,
    keep_processes: bool = False,
    rewards: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan, sample, score and summarise; returns the run's summary (``OUT/summary.json``).

    ``backbone``: sample with this loaded model (a training run's, its weights being those of ``cfg.model``) instead of
    loading ``cfg.model``; its resolution is restored afterwards. ``keep_processes``: leave the process group open (a
    training run goes on after its evaluation). ``rewards``: loaded reward models by name, filled and reused by a
    caller that evaluates again (a training run's evaluations load each reward once)."""
    from accelerate import PartialState

    from flowopd.runinfo import write_json_atomic

    t0 = time.time()
    out = Path(out)
    model = resolve_model(cfg.model, cfg.lora)
    plan = _runnable_plan(cfg, model)
    from accelerate.utils import parse_flag_from_env

    # on a machine without CUDA, processes started by `accelerate launch` talk over gloo (PartialState() alone would not)
    from flowopd.runinfo import check_launcher

    check_launcher()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    config = dataclasses.asdict(cfg)
    digest = model.digest()
    if state.is_main_process:
        _check_out(out, config, digest)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / MARKER, {"kind": "flowopd-eval", "config": config, "model_digest": digest})
    state.wait_for_everyone()
    say = progress if (progress and state.is_main_process) else None

    backbone = model.load(str(state.device)) if backbone is None else backbone
    sampling = sampling_for(backbone, cfg)
    official = sampling_for(backbone, EvalConfig(suites=[], model=cfg.model))  # the protocol's reference (protocol.py)
    resolution_before = getattr(backbone, "resolution", None)
    if hasattr(backbone, "set_resolution") and sampling.get("resolution"):
        backbone.set_resolution(int(sampling["resolution"]))
    try:
        _run_suites(plan, cfg, backbone, sampling, model, state, out, cache_path, say, {} if rewards is None else rewards)
    finally:
        if resolution_before is not None and backbone.resolution != resolution_before:
            backbone.set_resolution(resolution_before)
    state.wait_for_everyone()
    sampled = {"sampling": sampling, "official": official}
    summary = _merge(plan, out, state.num_processes, digest, config, sampled, cfg, cache_path, t0) if state.is_main_process else {}
    if not keep_processes:
        _end_processes(state)
    return summary


def _run_suites(plan: EvalPlan, cfg: EvalConfig, backbone, sampling, model, state, out: Path, cache_path, say, rewards) -> None:
    """This process's share of every suite's jobs, sampled and scored into ``.records.rank<i>.json`` (and its cache stats)."""
    from flowopd.runinfo import write_json_atomic

    store = ImageStore(out)
    cache = _open_cache(state, cache_path)
    counts = {"generated": 0, "reused": 0}
    try:
        for suite in plan.run:
            jobs = suite.jobs(cfg.limit, cfg.seed, cfg.images_per_prompt)
            mine = list(range(state.process_index, len(jobs), state.num_processes))
            available = suite.available_rewards()
            records = _run_suite(
                suite, [jobs[i] for i in mine], backbone, sampling, model, store, cache, rewards, available, cfg, counts, say
            )
            for rec, i in zip(records, mine):
                rec["order"] = i
            write_json_atomic(out / suite.name / f".records.rank{state.process_index}.json", records)
    finally:
        hits, misses = cache.hits, cache.misses
        cache.close()
    write_json_atomic(out / f".stats.rank{state.process_index}.json", {"hits": hits, "misses": misses, **counts})


def _runnable_plan(cfg: EvalConfig, model: Any) -> EvalPlan:
    """The suites to run; with ``--strict`` any suite that cannot run fails the eval, and with none to run it fails too."""
    plan = plan_eval(cfg.suites, model, cfg.prompts, cfg.rewards)
    if cfg.strict and plan.skipped:
        name, reason = next(iter(plan.skipped.items()))
        more = f" (and {len(plan.skipped) - 1} more)" if len(plan.skipped) > 1 else ""
        raise FlowOPDError(f"--strict: suite {name} cannot run: {reason}{more}")
    if not plan.run:
        reasons = "; ".join(f"{k}: {v}" for k, v in plan.skipped.items())
        raise FlowOPDError(f"no suite can run for {model.spec}: {reasons}")
    return plan


def _open_cache(state: Any, cache_path: str | Path | None) -> Any:
    """The score cache: the main process creates the file and switches it to WAL; then the others open it."""
    from flowopd.benchmarks.score_cache import ScoreCache

    if state.is_main_process:
        cache = ScoreCache(cache_path or default_cache_path())
    state.wait_for_everyone()
    if not state.is_main_process:
        cache = ScoreCache(cache_path or default_cache_path())
    return cache


def _end_processes(state: Any) -> None:
    """Wait for process 0's summary, then close the process group: a gloo group left to interpreter exit can abort."""
    import torch.distributed as dist

    if state.num_processes > 1 and dist.is_available() and dist.is_initialized():
        state.wait_for_everyone()
        dist.destroy_process_group()


def _merge(
    plan: EvalPlan,
    out: Path,
    processes: int,
    digest: str,
    config: dict[str, Any],
    sampled: dict[str, Any],
    cfg: EvalConfig,
    cache_path: str | Path | None,
    t0: float,
) -> dict[str, Any]:
    """Process 0: every process's records in job order, the metrics, each suite's protocol, and ``summary.json``.

    ``sampled``: ``sampling`` (as run) and ``official`` (the model's default, the protocol's reference)."""
    from flowopd.benchmarks.protocol import suite_protocol
    from flowopd.runinfo import run_info, write_json_atomic

    model = plan.model
    stats = {"hits": 0, "misses": 0, "generated": 0, "reused": 0}
    for r in range(processes):
        part = out / f".stats.rank{r}.json"
        for k, v in json.loads(part.read_text()).items():
            stats[k] += v
        part.unlink()
    summary: dict[str, Any] = {
        "kind": "flowopd-eval",
        "model": {"spec": model.spec, "label": model.label, "world": model.world, "digest": digest, "train_log": _str(model.train_log())},
        "suites": {},
        "skipped": dict(plan.skipped),
        "warnings": plan.warnings,
        "metrics": {},
    }
    for suite in plan.run:
        parts = [out / suite.name / f".records.rank{r}.json" for r in range(processes)]
        records = sorted((rec for p in parts for rec in json.loads(p.read_text())), key=lambda rec: rec.pop("order"))
        suite_summary = _summarise(suite, records, sampled["sampling"], suite.available_rewards())
        images = cfg.images_per_prompt or suite.images_per_prompt
        rewards = sorted({name for rec in records for name in rec["scores"]})
        suite_summary["protocol"] = suite_protocol(
            sampled["sampling"], sampled["official"], images, suite.images_per_prompt, cfg.seed, rewards
        )
        _write_jsonl(out / suite.name / "samples.jsonl", records)
        write_json_atomic(out / suite.name / "summary.json", suite_summary)
        for p in parts:
            p.unlink()
        summary["suites"][suite.name] = suite_summary
        summary["metrics"].update({f"{suite.name}/{k}": v for k, v in suite_summary["metrics"].items()})
    summary["run"] = run_info({**config, "sampling": sampled["sampling"], "processes": processes}, cfg.seed)
    summary["cache"] = {"hits": stats["hits"], "misses": stats["misses"], "path": str(cache_path or default_cache_path())}
    summary["images"] = {"generated": stats["generated"], "reused": stats["reused"]}
    summary["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out / "summary.json", summary)
    return summary


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _run_suite(
    suite: Suite,
    jobs: list[Job],
    backbone: Any,
    sampling: dict[str, Any],
    model: ModelRef,
    store: ImageStore,
    cache: Any,
    rewards: dict[str, Any],
    available: list[str],
    cfg: EvalConfig,
    counts: dict[str, int],
    say: Progress | None,
) -> list[dict[str, Any]]:
    """Sample the missing images of ``jobs`` batch by batch, then score every image with its rewards through the cache."""
    keys = [image_key(j, sampling) for j in jobs]
    _sample_missing(suite.name, jobs, keys, backbone, sampling, model, store, cfg.batch_size, counts, say)
    records = [
        {
            "suite": suite.name,
            "task": j.task,
            "prompt": j.prompt,
            "metadata": j.metadata,
            "index": j.index,
            "seed": j.seed,
            "image": f"images/{key}.png",
            "scores": {},
        }
        for j, key in zip(jobs, keys)
    ]
    needs = [suite.job_rewards(job, available) for job in jobs]
    device = str(getattr(backbone, "device", "cpu"))
    chunk = max(cfg.batch_size, 64)
    for start in range(0, len(jobs), chunk):  # each image is read from disk once, then scored by every reward it needs
        if say:
            say(f"{suite.name}: scoring", start, len(jobs))
        part = [k for k in range(start, min(start + chunk, len(jobs))) if needs[k]]
        _score_part(part, jobs, keys, needs, records, store, cache, rewards, device)
    if say:
        say(f"{suite.name}: scored", len(jobs), max(len(jobs), 1))
    return records


def _sample_missing(name, jobs, keys, backbone, sampling, model, store, batch_size: int, counts, say) -> None:
    """Sample (ODE) and save the images of ``jobs`` the store does not hold yet, ``batch_size`` at a time."""
    from flowopd.reward_models.base import to_uint8_hwc
    from flowopd.sampling import sample_ode, schedule_args

    todo = [k for k, key in enumerate(keys) if not store.has(key)]
    counts["reused"] += len(jobs) - len(todo)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        if say:
            say(f"{name}: sampling", start, len(todo))
        images = sample_ode(
            backbone,
            [jobs[k].prompt for k in batch],
            [jobs[k].seed for k in batch],
            steps=int(sampling["steps"]),
            cfg=float(sampling["cfg"]),
            negative_prompt=sampling["negative_prompt"],
            **schedule_args(sampling),  # shift, and FLUX's / Qwen-Image's spacing and terminal stretch
            batch_size=batch_size,
        )
        for k, arr in zip(batch, to_uint8_hwc(images)):
            job = jobs[k]
            meta = {"prompt": job.prompt, "seed": job.seed, "sampling": sampling, "model": model.spec, "model_label": model.label}
            store.save(keys[k], arr, meta)
        counts["generated"] += len(batch)
    if say:
        say(f"{name}: sampled", len(todo), max(len(todo), 1))


def _score_part(part, jobs, keys, needs, records, store, cache, rewards: dict[str, Any], device: str) -> None:
    """Score the images ``part`` (indices into ``jobs``) with every reward each needs, through the cache, into ``records``."""
    from flowopd.reward_models import load_reward

    pixels = {k: store.load(keys[k]) for k in part}  # uint8: the saved pixels, whether made now or by an earlier run
    for name in dict.fromkeys(n for k in part for n in needs[k]):
        if name not in rewards:
            rewards[name] = load_reward(name, device=device)
        idx = [k for k in part if name in needs[k]]
        batch = np.stack([pixels[k] for k in idx])  # uint8 HWC from the store straight to the reward
        scores = cache.score(rewards[name], batch, [jobs[k].prompt for k in idx], [jobs[k].metadata for k in idx])
        for k, rec in zip(idx, scores.to_records()):
            records[k]["scores"][name] = rec
    for k in part:  # each record lists its rewards in its own order, however the chunk was made up
        records[k]["scores"] = {n: records[k]["scores"][n] for n in needs[k]}


def _summarise(suite: Suite, records: list[dict[str, Any]], sampling: dict[str, Any], rewards: list[str]) -> dict[str, Any]:
    metrics = suite.aggregate(suite, records, rewards) if suite.aggregate else {}
    failed = {}
    for rec in records:
        for name, s in rec["scores"].items():
            if s.get("failed") or s.get("raw") is None or (isinstance(s.get("raw"), float) and math.isnan(s["raw"])):
                failed[name] = failed.get(name, 0) + 1
    skipped_metrics = {}
    if suite.optional_rewards:
        from flowopd.benchmarks.suites import reward_statuses

        for name, (ok, reason) in reward_statuses(list(suite.optional_rewards)).items():
            if not ok:
                skipped_metrics[name] = reason
    out = {
        "suite": suite.name,
        "description": suite.description,
        "n_images": len(records),
        "n_prompts": len({(r["prompt"], json.dumps(r["metadata"], sort_keys=True, default=str)) for r in records}),
        "metrics": metrics,
        "failed": failed,
        "sampling": sampling,
        "notes": list(suite.notes),
    }
    if skipped_metrics:
        out["skipped_metrics"] = skipped_metrics
    if suite.headline is not None:
        out["headline"] = suite.headline(metrics)
    return out


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from flowopd.runinfo import atomic_file

    with atomic_file(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, default=str) + "\n")
