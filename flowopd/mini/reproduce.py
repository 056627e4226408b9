"""The mini reproduction: the mini analogue of the paper's Tables 1, 2 and 4 in one command.

From the shipped base and GRPO-Mix baselines and the OPD recipe's teachers (the
shipped GRPO ones by default; `teacher_rows`) it makes both cold starts,
trains five OPD students (the main one, one from the SFT cold start, one without
MAR, one per other objective), evaluates all 14 models on the same held-out
mini prompts and seeds, and writes one evaluation folder per model
(``evals/<row>``, written by the evaluation runner and read by `flowopd report`), ``results.json``
and ``results.md``. Every stage is skipped when its output is already there,
so a killed reproduction continues where it stopped.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowopd.benchmarks.stats import Z95, standard_error
from flowopd.mini.world import COMPOSE_TAGS

TASKS = ("compose", "text", "preference", "quality")
SCALE = {"compose": 1.0, "text": 1.0, "preference": 1.0, "quality": 5.0}  # 0-1 normalisation (quality is 1-5, like DeQA)

# (row, table, what it is); the spec of each row is resolved in `plan`
ROWS = [
    ("base", "1-2", "mini-base"),
    ("teacher-compose", "1", "GRPO teacher, mini_geneval"),
    ("teacher-text", "1", "GRPO teacher, mini_ocr"),
    ("teacher-preference", "1", "GRPO teacher, mini_preference"),
    ("teacher-quality", "1", "GRPO teacher, mini_quality"),
    ("mix-weighted", "1-2", "GRPO-Mix, one weighted reward 3:1:1"),
    ("mix-alternate", "1-2", "GRPO-Mix, alternating datasets 3:1:1"),
    ("coldstart-merge", "4", "merge cold start alone (cat)"),
    ("coldstart-sft", "4", "SFT cold start alone"),
    ("opd", "2-4", "Flow-OPD: merge cold start, kl, MAR 0.02"),
    ("opd-sft", "4", "Flow-OPD from the SFT cold start"),
    ("opd-no-mar", "4", "Flow-OPD without MAR"),
    ("opd-kl_pg", "4", "Flow-OPD, objective kl_pg"),
    ("opd-paper", "4", "Flow-OPD, objective paper (eq. 10-11)"),
]
SHIPPED = {"base": "mini-base", "mix-weighted": "mini-mix-weighted", "mix-alternate": "mini-mix-alternate"}


def teacher_rows(cfg) -> dict[str, tuple[str, str]]:
    """Each task's teacher row from the OPD recipe's own teachers: (model spec, what it is). A recipe naming other
    teachers (e.g. DiffusionNFT ones) thus gets its teacher rows, and the comparisons against them, from those."""
    from flowopd.errors import ConfigError
    from flowopd.models import model_folder

    rows = {}
    for task in TASKS:
        teacher = next((t for t in cfg.opd.teachers if task in t.tasks), None)
        if teacher is None:
            raise ConfigError(f"the OPD recipe has no teacher for task {task!r}; the reproduction needs one per mini task")
        spec, info = teacher.checkpoint, model_folder(teacher.checkpoint) / "lora_info.json"
        objective = json.loads(info.read_text()).get("objective", "grpo") if info.is_file() else "grpo"
        rows[f"teacher-{task}"] = (spec, f"{'NFT' if objective == 'nft' else 'GRPO'} teacher, {teacher.reward}")
    return rows


def _opd_variants(cfg, out: Path) -> dict[str, Any]:
    """The five OPD students' configs: the recipe, with one change each."""

    def variant(name: str, start: str, **opd) -> Any:
        c = cfg.with_cold_start(from_lora=str(out / "models" / f"coldstart-{start}"))
        return c.model_copy(update={"name": name, "opd": c.opd.model_copy(update=opd), "trackers": []})

    return {
        "opd": variant("opd", "merge"),
        "opd-sft": variant("opd-sft", "sft"),
        "opd-no-mar": variant("opd-no-mar", "merge", mar_lambda=0.0),
        "opd-kl_pg": variant("opd-kl_pg", "merge", objective="kl_pg"),
        "opd-paper": variant("opd-paper", "merge", objective="paper"),
    }


def reproduce(
    out: Path, config: str = "mini/opd", limit: int = 32, steps: int | None = None, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Run every stage (skipping those already done) and write ``results.json`` and ``results.md`` into ``out``."""
    from flowopd.config import load_config
    from flowopd.plan_checks import check_plan
    from flowopd.runinfo import write_json_atomic
    from flowopd.train_config import TrainConfig, recipe_path

    cfg = load_config(TrainConfig, recipe_path(config), {"steps": steps})
    if cfg.opd is None:
        from flowopd.errors import ConfigError

        raise ConfigError(f"config {config} has no opd section; pass an OPD recipe such as mini/opd")
    variants = _opd_variants(cfg, out)
    for v in variants.values():
        check_plan(v)  # every bad input before hours of work
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
    t_start = time.perf_counter()
    teachers = teacher_rows(cfg)  # before hours of work: a recipe without a teacher for some task is refused here
    stages, specs = _stages(cfg, variants, out, limit, {row: spec for row, (spec, _) in teachers.items()})
    for done, (label, work, finished) in enumerate(stages):
        if progress:
            progress(label, done, len(stages))
        if not finished():
            t0 = time.perf_counter()
            work()
            timings[label] = round(time.perf_counter() - t0, 1)
            write_json_atomic(out / "timings.json", timings)
    if progress:
        progress("tables", len(stages), len(stages))
    results = summarise(out, specs, {row: what for row, (_, what) in teachers.items()})
    results.update(timings=timings, wall_seconds_this_call=round(time.perf_counter() - t_start, 1), limit=limit, config=config)
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(to_markdown(results))
    return results


def _stages(
    cfg, variants: dict, out: Path, limit: int, teachers: dict[str, str]
) -> tuple[list[tuple[str, Callable[[], Any], Callable[[], bool]]], dict[str, str]]:
    """The reproduction's stages in order, each (label, work, finished?), and the model spec of every row
    (``teachers``: each teacher row's spec)."""
    from flowopd.benchmarks.runner import EvalConfig, run_eval
    from flowopd.coldstart import merge_teachers, sft_cold_start
    from flowopd.lora import LORA_FILE

    stages: list[tuple[str, Callable[[], Any], Callable[[], bool]]] = []
    models = out / "models"
    for method in ("merge", "sft"):
        folder, c = models / f"coldstart-{method}", cfg.with_cold_start(method=method, from_lora=None)
        make = merge_teachers if method == "merge" else sft_cold_start
        stages.append((f"cold start {method}", lambda c=c, folder=folder, make=make: make(c, folder), (folder / LORA_FILE).is_file))
    for name, v in variants.items():
        run = out / "runs" / name
        stages.append((f"train {name}", functools.partial(_train, v, run), (run / "lora" / LORA_FILE).is_file))
    specs = {**SHIPPED, **teachers}
    specs.update({f"coldstart-{m}": str(models / f"coldstart-{m}") for m in ("merge", "sft")})
    specs.update({name: str(out / "runs" / name / "lora") for name in variants})
    for row, _, _ in ROWS:
        target, ecfg = out / "evals" / row, EvalConfig(suites=["mini"], model=specs[row], limit=limit)
        stages.append((f"eval {row}", lambda ecfg=ecfg, target=target: run_eval(ecfg, target), (target / "summary.json").is_file))
    return stages, specs


def _train(cfg, run: Path) -> None:
    """Train one OPD student into ``run`` (continuing it when an earlier call stopped part-way)."""
    from flowopd.run_folder import RUN_MARKER
    from flowopd.trainer import Trainer

    Trainer(cfg, run, resume=(run / RUN_MARKER).is_file()).train()


# ----------------------------------------------------------------------------- tables


def _norm(m: dict[str, Any], task: str) -> tuple[float, float]:
    """(mean, standard error) of a headline metric on the 0-1 scale."""
    return m["mean"] / SCALE[task], standard_error(m) / SCALE[task]


def summarise(out: Path, specs: dict[str, str], whats: dict[str, str] | None = None) -> dict[str, Any]:
    """Per row: the four headline metrics and their normalised mean; the paired comparisons the issue asks about.
    ``whats`` overrides a row's description (the teacher rows name their objective)."""
    from flowopd.benchmarks.report import paired_avg, paired_deltas

    rows: dict[str, Any] = {}
    for row, table, what in ROWS:
        mini = json.loads((out / "evals" / row / "summary.json").read_text())["suites"]["mini"]
        cells = {t: mini["metrics"][mini["headline"][t]] for t in TASKS}
        parts = [_norm(cells[t], t) for t in TASKS]
        mean = sum(p[0] for p in parts) / 4
        se = math.sqrt(sum(p[1] ** 2 for p in parts)) / 4
        rows[row] = {
            "table": table,
            "what": (whats or {}).get(row, what),
            "model": specs[row],
            "metrics": cells,
            "mean4": {"mean": mean, "ci95": [mean - Z95 * se, mean + Z95 * se]},
            "tags": {t: mini["metrics"][f"compose/geneval_{t}"]["mean"] for t in COMPOSE_TAGS if f"compose/geneval_{t}" in mini["metrics"]},
        }
    samples = {row: _records(out / "evals" / row / "mini" / "samples.jsonl") for row, _, _ in ROWS}

    def paired(a: str, b: str) -> dict[str, Any]:
        """Paired changes a - b per task (normalised) and of the four-task mean."""
        d = paired_deltas(samples[a], samples[b])
        by_task = {}
        for t in TASKS:
            key = next(k for k in d if k.startswith(f"{t}/"))
            by_task[t] = _scaled(d[key], 1 / SCALE[t])
        avg = paired_avg(d)  # the report's paired Avg: the same four changes, quality / 5
        return {"tasks": by_task, "mean4": {"mean": avg["mean"], "ci95": avg["ci95"]}}

    comparisons = {f"{t} - base": paired(t, "base") for t in [*(f"teacher-{t}" for t in TASKS), "mix-weighted", "mix-alternate"]}
    comparisons.update({f"mix-weighted - teacher-{t}": paired("mix-weighted", f"teacher-{t}") for t in TASKS})
    comparisons.update({f"opd - {b}": paired("opd", b) for b in ("mix-weighted", "mix-alternate", "base", "coldstart-merge")})
    for name in ("opd-sft", "opd-no-mar", "opd-kl_pg", "opd-paper"):
        comparisons[f"{name} - opd"] = paired(name, "opd")
    teachers = {}
    for t in TASKS:
        d = paired("opd", f"teacher-{t}")["tasks"][t]
        teachers[t] = {**d, "within_0.03": d["mean"] >= -0.03}
    results = {"rows": rows, "comparisons": comparisons, "student_vs_teachers": teachers}
    results["targets"] = check_targets(results)
    return results


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Points 1-4 of the mini reproduction's target (issue 14), each with a verdict and the numbers behind it (0-1 scale)."""
    rows, comp = results["rows"], results["comparisons"]
    base = {t: _norm(rows["base"]["metrics"][t], t)[0] for t in TASKS}

    def sig_below(c: dict[str, Any]) -> bool:
        return c["ci95"][1] < 0

    out = []
    tags = rows["base"].get("tags", {})
    out.append(
        {
            "point": "1. base: every task in [0.2, 0.7], every compose tag >= 0.10",
            "ok": all(0.2 <= v <= 0.7 for v in base.values()) and all(v >= 0.10 for v in tags.values()),
            "detail": ", ".join(f"{t} {v:.3f}" for t, v in base.items()) + "; tags " + ", ".join(f"{t} {v:.2f}" for t, v in tags.items()),
        }
    )
    gains, seesaw = [], []
    for t in TASKS:
        own = comp[f"teacher-{t} - base"]["tasks"][t]
        need = (1 - base[t]) / 3
        gains.append((t, own["mean"] >= need and own["ci95"][0] > 0, own["mean"], need))
        losses = [o for o in TASKS if o != t and sig_below(comp[f"teacher-{t} - base"]["tasks"][o])]
        if losses:
            seesaw.append(f"{t} costs {', '.join(losses)}")
    out.append(
        {
            "point": "2. each teacher closes a third of its gap (CI excludes 0); two or more show the seesaw",
            "ok": all(g[1] for g in gains) and len(seesaw) >= 2,
            "detail": "; ".join(f"{t} {m:+.3f} (needs {n:+.3f}){'' if ok else ' MISSED'}" for t, ok, m, n in gains)
            + f"; seesaw: {', '.join(seesaw) or 'none'}",
        }
    )
    mix = comp["mix-weighted - base"]["mean4"]
    above = [t for t in TASKS if comp[f"mix-weighted - teacher-{t}"]["tasks"][t]["mean"] >= 0]
    out.append(
        {
            "point": "3. GRPO-Mix weighted: four-task mean above the base, below each teacher on its own task",
            "ok": mix["ci95"][0] > 0 and not above,
            "detail": f"mix - base mean4 {_cell(mix, True)}; at or above its teacher on: {', '.join(above) or 'none'}",
        }
    )
    vs_mix = comp["opd - mix-weighted"]["mean4"]
    short = [t for t, d in results["student_vs_teachers"].items() if not d["within_0.03"]]
    worse = [t for t in TASKS if sig_below(comp["opd - base"]["tasks"][t])]
    out.append(
        {
            "point": "4. OPD: four-task mean above GRPO-Mix weighted (CI excludes 0), within 0.03 of each teacher, no task below the base",
            "ok": vs_mix["ci95"][0] > 0 and not short and not worse,
            "detail": f"opd - mix mean4 {_cell(vs_mix, True)}; more than 0.03 short of: {', '.join(short) or 'none'}; "
            f"significantly below the base on: {', '.join(worse) or 'none'}",
        }
    )
    return out


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scaled(m: dict[str, Any], k: float) -> dict[str, Any]:
    return {"mean": m["mean"] * k, "ci95": [m["ci95"][0] * k, m["ci95"][1] * k], "n": m.get("n")}


def _cell(m: dict[str, Any], signed: bool = False) -> str:
    lo, hi = m["ci95"]
    f = "{:+.3f}" if signed else "{:.3f}"
    star = "*" if signed and (lo > 0 or hi < 0) else ""
    return f"{f.format(m['mean'])} [{f.format(lo)}, {f.format(hi)}]{star}"


def to_markdown(results: dict[str, Any]) -> str:
    """The reproduction's tables: every model's metrics, then the paired comparisons."""
    lines = [
        "# Mini reproduction (the paper's Tables 1, 2 and 4 on the mini world)",
        "",
        f"Held-out mini prompts, {results.get('limit')} per task (compose: per tag, 6 tags), one image per prompt, the same seeds "
        "for every model; mean [95% CI] (n). `mean4` is the mean of the four metrics on a 0-1 scale (quality / 5), like the "
        "paper's Avg.",
        "",
        "| row | table | model | compose (GenEval) | text (OCR) | preference | quality (1-5) | mean4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, r in results["rows"].items():
        cells = [f"{_cell(r['metrics'][t])} ({r['metrics'][t]['n']})" for t in TASKS]
        lines.append(f"| {row} | {r['table']} | {r['what']} | " + " | ".join(cells) + f" | {_cell(r['mean4'])} |")
    lines += [
        "",
        "## Paired changes (same prompts and seeds; 0-1 scale; * = the 95% interval excludes 0)",
        "",
        "| comparison | compose | text | preference | quality | mean4 |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in results["comparisons"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(c["tasks"][t], True) for t in TASKS) + f" | {_cell(c['mean4'], True)} |")
    lines += ["", "## The student against each teacher on that teacher's own task (0-1 scale)", ""]
    lines += ["| task | opd - teacher | within 0.03 |", "|---|---|---|"]
    for t, d in results["student_vs_teachers"].items():
        lines.append(f"| {t} | {_cell(d, True)} | {'yes' if d['within_0.03'] else 'no'} |")
    lines += ["", "## The target (issue 14), point by point", ""]
    lines += [f"- **{'met' if t['ok'] else 'not met'}**: {t['point']}. {t['detail']}" for t in results.get("targets", [])]
    timings = results.get("timings", {})
    if timings:
        lines += ["", f"Stage times (s): {json.dumps(timings)}; total {sum(timings.values()) / 60:.1f} min."]
    return "\n".join(lines) + "\n"
