"""`flowopd sample`, `flowopd eval`, `flowopd report`, `flowopd publish`."""

from __future__ import annotations

import json
import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flowopd.cli.app import (
    Format,
    _fail,
    _grid,
    _interrupted,
    _print_table,
    _refuse_blank_prompts,
    _rerun_command,
    _save_png,
    _yes_no,
    app,
    suites_app,
)
from flowopd.cli.ui import console, progress_bar, styled, warn, warn_once
from flowopd.models import MINI_SAMPLING  # stdlib-only module: keeps --help fast

# ------------------------------------------------------------------ sample


@app.command()
def sample(
    prompt: list[str] | None = typer.Option(None, "--prompt", "-p", help="Prompt (repeatable)."),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="A .txt or .jsonl prompt file (then --out is a folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file (one prompt) or folder (several prompts)."),
    model: str = typer.Option(
        "mini-base",
        "--model",
        "-m",
        help="mini-base, a mini teacher (mini-teacher-text...), a model or LoRA folder, a diffusers SD3 folder or sd3:<hub id>.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image k uses seed + k."),
    steps: int | None = typer.Option(None, "--steps", min=1, help=f"ODE steps (mini default {MINI_SAMPLING['steps']}, SD3 40)."),
    cfg: float | None = typer.Option(None, "--cfg", min=1.0, help=f"Guidance scale (mini default {MINI_SAMPLING['cfg']}, SD3 4.5)."),
    n: int = typer.Option(1, "--n", min=1, help="Images per prompt (several make a grid)."),
    scale: int | None = typer.Option(None, "--scale", min=1, max=64, help="Nearest-neighbour upscale of the saved PNG (mini 8, SD3 1)."),
) -> None:
    """Generate images with the deterministic ODE sampler and save them as PNG."""
    texts = _sample_prompts(prompt, prompts_file, out)
    import torch

    from flowopd.models import load_backbone
    from flowopd.sampling import sample_ode, schedule_args

    backbone = load_backbone(model, device="cuda" if torch.cuda.is_available() else "cpu")
    defaults = getattr(backbone, "default_sampling", None) or MINI_SAMPLING  # SD3: SPEC section 8; mini: its own
    if defaults.get("resolution"):
        backbone.set_resolution(int(defaults["resolution"]))
    steps = steps or defaults["steps"]
    cfg = cfg if cfg is not None else defaults["cfg"]
    scale = scale or (1 if defaults is not MINI_SAMPLING else 8)
    for t in texts:
        unknown = backbone.unknown_words(t) if hasattr(backbone, "unknown_words") else []
        if unknown:
            warn(f"words outside the mini vocabulary (read as unknown): {', '.join(unknown)}")
    jobs = [(t, seed + k) for t in texts for k in range(n)]
    batch = 64 if defaults is MINI_SAMPLING else 4
    with progress_bar("sampling", len(jobs)) as advance:
        images = sample_ode(
            backbone,
            [t for t, _ in jobs],
            [s for _, s in jobs],
            steps=steps,
            cfg=cfg,
            **schedule_args(defaults),  # shift, and FLUX's / Qwen-Image's spacing and terminal stretch
            batch_size=batch,
            progress=advance,
        )
    from flowopd.reward_models.base import to_uint8_hwc

    arrays = to_uint8_hwc(images)
    if len(texts) == 1:
        _save_png(arrays[0] if n == 1 else _grid(arrays, min(n, 8)), out, scale)
        console.print(f"wrote {out}  ({n} image{'s' * (n > 1)}, seed {seed}, {steps} steps, cfg {cfg})")
        return
    _save_sample_folder(out, jobs, arrays, scale, {"steps": steps, "cfg": cfg, "model": model})


def _sample_prompts(prompt: list[str] | None, prompts_file: Path | None, out: Path) -> list[str]:
    """The prompts to sample (``--prompt`` and ``--prompts``), refused in one line before any model loads: none, a blank
    one, or an ``--out`` that does not fit (a .png for one prompt, a writable new folder for several)."""
    texts: list[str] = list(prompt or [])
    if prompts_file is not None:
        from flowopd.benchmarks.prompts import load_prompt_file

        texts += [p.text for p in load_prompt_file(prompts_file)]
    if not texts:
        _fail("give a prompt with --prompt TEXT or a prompt file with --prompts FILE")
    _refuse_blank_prompts(texts)
    single = len(texts) == 1
    if single and out.suffix.lower() != ".png":
        _fail(f"--out {out} must end in .png for one prompt (or pass several prompts and a folder)")
    if not single and out.suffix:
        _fail(f"--out {out} must be a folder when sampling {len(texts)} prompts")
    from flowopd.runinfo import check_output_dir, check_writable

    if single:
        check_writable(out.parent)  # before minutes of sampling, not after
    else:
        check_output_dir(out, "metadata.jsonl")
    return texts


def _save_sample_folder(out: Path, jobs: list[tuple[str, int]], arrays, scale: int, protocol: dict) -> None:
    """One PNG per image and ``metadata.jsonl`` (file, prompt, seed, steps, cfg, model), written whole or not at all."""
    from flowopd.runinfo import atomic_dir

    with atomic_dir(out, marker="metadata.jsonl") as tmp:
        with open(tmp / "metadata.jsonl", "w") as f:
            for k, ((t, s), a) in enumerate(zip(jobs, arrays)):
                name = f"{k:05d}.png"
                _save_png(a, tmp / name, scale)
                f.write(json.dumps({"file": name, "prompt": t, "seed": s, **protocol}) + "\n")
    console.print(f"wrote {len(jobs)} images and metadata.jsonl to {out}/")


# ------------------------------------------------------------------ eval / report


def _print_skipped(skipped: dict[str, str]) -> None:
    """Suites not run, one paragraph each; a reason shared by several (the model's world) is said once."""
    from flowopd.benchmarks.suites import WORLD_REASON

    if not skipped:
        return
    shared = [name for name, reason in skipped.items() if reason.startswith(WORLD_REASON)]
    if shared:
        console.print(styled(("not run", "bold"), f" ({WORLD_REASON}): {', '.join(shared)}"), highlight=False)
    for name, reason in skipped.items():
        rest = reason[len(WORLD_REASON) :].removeprefix("; also ") if name in shared else reason
        if rest:
            label = styled(f"  {name} would also need") if name in shared else styled(("not run", "bold"), f" {name}:")
            console.print(label + f" {rest}", highlight=False)  # reasons hold [extras]: printed as they are


EvalSuites = Annotated[
    list[str],
    typer.Option(
        "--suite",
        "-s",
        help="A suite (mini, geneval, geneval@hf-m2f, ocr, pickscore, deqa, quality, hpsv2, t2i-compbench, geneval2, dpg-bench, oneig, a plugin's: "
        "`flowopd suites list`) or all; repeatable.",
    ),
]
EvalModel = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="mini-student (default), mini-base, a shipped teacher, a model or LoRA folder, a diffusers SD3 folder, or sd3:<hub id>.",
    ),
]
EvalLimit = Annotated[
    int | None, typer.Option("--limit", min=1, help="Prompts per group (GenEval tag, HPS style, T2I-CompBench category, mini task).")
]
EvalPrompts = Annotated[
    str | None,
    typer.Option("--prompts", help="Build the suite on the fly: a prompt set (see `flowopd prompts list`), a .txt/.jsonl file, or mini."),
]


@app.command("eval")
def eval_cmd(
    suite: EvalSuites = ["all"],  # noqa: B006 (typer copies the default; the help shows it)
    model: EvalModel = None,
    lora: Path | None = typer.Option(None, "--lora", help="A diffusers-format LoRA on an SD3 base."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/eval-<model>); an unfinished one is resumed."),
    limit: EvalLimit = None,
    images: int | None = typer.Option(None, "--images-per-prompt", min=1, help="Override the suites' images per prompt."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="ODE steps (default: the model's; SD3 40)."),
    cfg: float | None = typer.Option(None, "--cfg", min=1.0, help="Guidance scale (default: the model's; SD3 4.5)."),
    resolution: int | None = typer.Option(None, "--resolution", min=8, help="Image size in pixels (SD3 default 512)."),
    seed: int = typer.Option(0, "--seed", help="Suite seed: image seeds derive from (prompt, image index, seed)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images sampled per batch (per process)."),
    strict: bool = typer.Option(False, "--strict", help="Fail when any requested suite cannot run."),
    cache: Path | None = typer.Option(None, "--cache", help="Score cache (default $FLOWOPD_CACHE_DIR/scores.sqlite, ~/.cache/flowopd)."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write report.md / report.html into the run folder."),
    prompts: EvalPrompts = None,
    reward: list[str] = typer.Option([], "--reward", "-r", help="With --prompts: a reward to score every image with (repeatable)."),
) -> None:
    """Evaluate a model on benchmark suites: images, per-sample JSONL, summary.json with CIs, and a report.

    `--prompts SET_OR_FILE --reward NAME` evaluates any reward, a plugin's included, on any prompts (suite `custom`).

    `flowopd eval` alone evaluates the shipped mini student on every suite it can run and lists the others with the reason.
    Under `accelerate launch` the images are split across processes.
    """
    from flowopd.benchmarks.runner import EvalConfig
    from flowopd.models import KNOWN_WEIGHTS, resolve_model

    if model is None:
        model = "mini-student" if KNOWN_WEIGHTS["mini-student"].present else "mini-base"
    if (prompts is not None or reward) and suite != ["all"]:
        _fail("pass either --suite or --prompts with --reward (a suite built on the fly), not both")
    lora_spec = str(lora) if lora else None
    ecfg = EvalConfig(suites=suite, model=model, lora=lora_spec, limit=limit, images_per_prompt=images, steps=steps, cfg=cfg)
    ecfg.resolution, ecfg.seed, ecfg.batch_size, ecfg.strict, ecfg.prompts, ecfg.rewards = (
        resolution,
        seed,
        batch_size,
        strict,
        prompts,
        list(reward),
    )
    ref = resolve_model(model, ecfg.lora)
    out = out or Path("runs") / f"eval-{ref.label}"
    t0 = time.time()
    summary = _run_eval_with_progress(ecfg, out, cache, ref.label)
    if summary:  # empty on the other processes under accelerate
        _print_eval_summary(summary, ref.label, out, no_report, t0)


def _run_eval_with_progress(ecfg, out: Path, cache: Path | None, label: str) -> dict | None:
    """``run_eval`` under a progress bar; Ctrl-C says what was kept and the command that continues, and exits 130."""
    from diffusers.utils import logging as diffusers_logging

    from flowopd.benchmarks.runner import run_eval

    if os.environ.get("FLOWOPD_DEBUG") != "1":
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components": ours shows the eval's progress
    with progress_bar(f"eval {label}", None) as advance:

        def show(stage: str, done: int, total: int) -> None:
            advance(description=f"eval: {stage}", completed=done, total=total)

        try:
            summary = run_eval(ecfg, out, cache_path=cache, progress=show)
        except KeyboardInterrupt:
            summary = None
    if summary is None:  # said after the progress bar has closed
        n = len(list((out / "images").glob("*.json"))) if (out / "images").is_dir() else 0
        _interrupted("evaluation stopped", f"{n} finished images kept in {out / 'images'}", _rerun_command())
    return summary


def _print_eval_summary(summary: dict, label: str, out: Path, no_report: bool, t0: float) -> None:
    """The metrics table, the suites skipped with why, where the images and scores came from, and the report."""
    for w in summary.get("warnings", []):
        warn(w)
    rows = []
    for name, s in summary["suites"].items():
        for key, m in s["metrics"].items():
            ci = m.get("note") or f"[{m['ci95'][0]:.4g}, {m['ci95'][1]:.4g}]" + (" (clipped to range)" if m.get("clipped") else "")
            rows.append((name, key, f"{m['mean']:.4g}", ci, str(m["n"])))
    _print_table(f"{label}: metrics (mean, 95% CI, n)", ("suite", "metric", "mean", "95% CI", "n"), rows)
    _print_skipped(summary["skipped"])
    img, c = summary["images"], summary["cache"]
    console.print(
        f"images: {img['generated']} generated, {img['reused']} reused from {out}/images; "
        f"scores: {c['hits']} from the cache, {c['misses']} computed ({c['path']})"
    )
    if not no_report:
        from flowopd.benchmarks.publish import write_run_report

        written = write_run_report(out)
        console.print(f"report: {', '.join(str(p) for p in written)}")
    console.print(f"wrote {out}/summary.json and per-suite samples.jsonl in {time.time() - t0:.0f} s")


class ReportFormat(str, Enum):
    md = "md"
    html = "html"
    json = "json"
    model_index = "model-index"


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="Evaluation run folders written by `flowopd eval` (or their summary.json)."),
    fmt: ReportFormat = typer.Option(
        ReportFormat.md, "--format", "-f", help="md, html (one self-contained page), json, or model-index (Hugging Face model card YAML)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the report here (default: print it; html needs --out)."),
    baselines: list[Path] | None = typer.Option(
        None,
        "--baselines",
        help="Published numbers to show beside the runs, marked as reported: a CSV or JSON of model, metric, value, source "
        "(or a shipped file by name: flow-opd-paper, oneig-bench). Repeat it to show several.",
    ),
    baseline: Path | None = typer.Option(None, "--baseline", "-b", help="A mini run folder to compare every run with, image by image."),
    allow_mixed_protocols: bool = typer.Option(
        False, "--allow-mixed-protocols", help="Show runs sampled with different protocols together (the differences are printed)."
    ),
) -> None:
    """A leaderboard like the paper's tables: mean [95% CI] and n per metric, best and second best marked, published rows beside.

    Runs whose sampling protocol differs on a suite (steps, CFG, resolution, images per prompt, seeds, reward versions)
    are refused unless --allow-mixed-protocols; runs off a suite's official protocol are noted."""
    from flowopd.benchmarks import report as rep
    from flowopd.runinfo import atomic_file

    if fmt is ReportFormat.html and out is None:
        _fail("--format html writes one page with every image embedded; pass --out report.html")
    lb = rep.build_report(results, baselines, baseline, allow_mixed_protocols)
    if fmt is ReportFormat.md:
        text = rep.to_markdown(lb, out)
    elif fmt is ReportFormat.json:
        text = json.dumps(rep.to_json(lb), indent=2, default=str) + "\n"
    elif fmt is ReportFormat.model_index:
        text = rep.model_index_yaml(lb.entries)
    else:
        from flowopd.benchmarks.html_report import render_report

        text = render_report(lb)
    if out is None:
        print(text, end="")
        return
    with atomic_file(out, "w") as f:
        f.write(text)
    console.print(f"wrote {out}")


@app.command()
def publish(
    results: list[Path] = typer.Argument(..., help="Evaluation run folders written by `flowopd eval`."),
    out: Path = typer.Option(..., "--out", "-o", help="Site folder to write (an earlier site there is replaced whole)."),
    baselines: list[Path] | None = typer.Option(
        None,
        "--baselines",
        help="Published numbers to show beside the runs (CSV or JSON of model, metric, value, source; or flow-opd-paper, "
        "oneig-bench). Repeat it to show several.",
    ),
) -> None:
    """A static leaderboard site: index.html, one page per model, results.json and model-index YAML; relative links only."""
    from flowopd.benchmarks.publish import publish as write_site
    from flowopd.benchmarks.report import build_report

    lb = build_report(results, baselines)
    write_site(lb, out)
    console.print(f"wrote {out}/index.html, {len(lb.runs)} model page(s) in models/, results.json and model-index/")


@suites_app.command("list")
def suites_list(fmt: Format = typer.Option(Format.table, "--format", help="table or json.")) -> None:
    """Every evaluation suite (built in, or a plugin's): its world, images per prompt, rewards, and whether it can run here."""
    from flowopd.benchmarks.suites import SUITES
    from flowopd.errors import InputError

    rows = []
    for name in SUITES:
        row: dict = {"name": name, "source": SUITES.source(name)}
        try:
            suite = SUITES[name]
        except InputError as exc:  # a plugin that cannot be imported: listed with its one-line reason
            rows.append({**row, "available": False, "reason": str(exc)})
            continue
        reason = suite.missing_inputs()
        rewards = [*suite.rewards, *suite.optional_rewards]
        row.update(world=suite.world, images_per_prompt=suite.images_per_prompt, rewards=rewards, description=suite.description)
        rows.append({**row, "available": reason is None, "reason": reason})
    for msg in SUITES.plugin_errors:
        warn_once(msg)
    if fmt is Format.json:
        print(json.dumps(rows, indent=2))
        return
    table = [
        (r["name"], r["source"], r.get("world", "?"), ", ".join(r.get("rewards", [])), _yes_no(r["available"], r["reason"])) for r in rows
    ]
    _print_table("evaluation suites", ("name", "source", "world", "rewards", "can run here"), table)
