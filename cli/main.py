"""``flowopd``: the command line. Heavy imports (torch, diffusers) happen inside the commands, so help is instant."""

from __future__ import annotations

import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flowopd.cli.ui import console, err_console, error, one_line, progress_bar, styled, warn
from flowopd.models import MINI_SAMPLING  # stdlib-only module: keeps --help fast

app = typer.Typer(
    name="flowopd",
    help="Align text-to-image flow-matching models to many rewards: GRPO teachers, then multi-teacher on-policy distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: "[a, b]" and "flowopd[paddle]" stay as written
    context_settings={"help_option_names": ["-h", "--help"]},
)
train_app = typer.Typer(
    rich_markup_mode=None,
    help="Train models: GRPO teachers, GRPO-Mix, cold start, OPD. (The mini base: `flowopd mini pretrain`.)",
    no_args_is_help=True,
)
rewards_app = typer.Typer(rich_markup_mode=None, help="Reward models: list them, score images.", no_args_is_help=True)
weights_app = typer.Typer(rich_markup_mode=None, help="Model weights: what is present and where.", no_args_is_help=True)
mini_app = typer.Typer(
    rich_markup_mode=None, help="The mini world: pre-train its base model, list its prompts, render ground truth.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
app.add_typer(rewards_app, name="rewards")
app.add_typer(weights_app, name="weights")
app.add_typer(mini_app, name="mini")
prompts_app = typer.Typer(rich_markup_mode=None, help="Benchmark prompt sets: list them, fetch them, show them.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


class Format(str, Enum):
    table = "table"
    json = "json"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"flowopd {version('flowopd')}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (accepted anywhere on the line)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    if debug:
        os.environ["FLOWOPD_DEBUG"] = "1"
    else:  # our own progress bars and one-line errors; the libraries' loading bars and advisories are noise here
        for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
            os.environ.setdefault(var, value)


# ------------------------------------------------------------------ helpers


def _fail(msg: str) -> None:
    from flowopd.errors import FlowOPDError

    raise FlowOPDError(msg)


_ARGV: list[str] = []  # this invocation's arguments, for the command that continues an interrupted run


def _rerun_command(add: str | None = None) -> str:
    """The command line of this invocation (plus ``add`` once): what continues it."""
    import shlex

    args = [a for a in _ARGV if a != add] + ([add] if add else [])
    return "flowopd " + " ".join(shlex.quote(a) for a in args)


def _interrupted(what: str, kept: str, command: str) -> None:
    """SIGINT: say what stopped, what was kept and the command that continues; exit 130."""
    err_console.print(f"interrupted: {what}; {kept}; continue with: {command}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def _refuse_blank_prompts(texts: list[str]) -> None:
    """An empty or whitespace-only prompt would silently mean the unconditional image: refuse it."""
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        _fail(f"prompt {blank[0] + 1} of {len(texts)} is empty or only whitespace; pass a prompt with words in it")


def _save_png(array, path: Path, scale: int = 1) -> None:
    """uint8 HWC -> PNG, nearest-neighbour upscaled by ``scale``, written atomically."""
    from PIL import Image

    from flowopd.runinfo import atomic_file

    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_file(path) as f:
        img.save(f, format="PNG")


def _grid(arrays, cols: int):
    import numpy as np

    n, h, w, c = arrays.shape
    rows = (n + cols - 1) // cols
    pad = 1
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k, a in enumerate(arrays):
        r, q = divmod(k, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = a
    return grid


def _print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))
    for col in columns:
        table.add_column(col)
    for row in rows:  # str cells are user text, printed as it is; our styles come as Text
        table.add_row(*(Text(c) if isinstance(c, str) else c for c in row))
    console.print(table)


def _yes_no(flag: bool, why: str | None = None):
    return styled(("yes", "green")) if flag else styled(("no", "red"), f": {why}" if why else "")


def _load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    from flowopd.errors import InputError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist; pass paths to PNG or JPEG files") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path} ({type(exc).__name__}); pass a PNG or JPEG file") from None


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
    import torch

    from flowopd.models import load_backbone
    from flowopd.sampling import sample_ode

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
            shift=defaults["shift"],
            batch_size=batch,
            progress=advance,
        )
    from flowopd.reward_models.base import to_uint8_hwc

    arrays = to_uint8_hwc(images)
    if single:
        _save_png(arrays[0] if n == 1 else _grid(arrays, min(n, 8)), out, scale)
        console.print(f"wrote {out}  ({n} image{'s' * (n > 1)}, seed {seed}, {steps} steps, cfg {cfg})")
        return
    from flowopd.runinfo import atomic_dir

    with atomic_dir(out, marker="metadata.jsonl") as tmp:
        with open(tmp / "metadata.jsonl", "w") as f:
            for k, ((t, s), a) in enumerate(zip(jobs, arrays)):
                name = f"{k:05d}.png"
                _save_png(a, tmp / name, scale)
                f.write(json.dumps({"file": name, "prompt": t, "seed": s, "steps": steps, "cfg": cfg, "model": model}) + "\n")
    console.print(f"wrote {len(jobs)} images and metadata.jsonl to {out}/")


# ------------------------------------------------------------------ rewards


@rewards_app.command("list")
def rewards_list(fmt: Format = typer.Option(Format.table, "--format", help="table or json.")) -> None:
    """Every reward model: name, version, where it comes from, and whether its weights are present."""
    import dataclasses

    from flowopd.reward_models import list_rewards
    from flowopd.reward_models.registry import plugin_errors

    infos = list_rewards()
    for msg in plugin_errors:  # said here too when this process has warned already
        warn(msg)
    if fmt is Format.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    rows = [(i.name, i.version or "?", i.source, _yes_no(i.available, i.reason), i.description) for i in infos]
    _print_table("reward models", ("name", "version", "source", "available", "description"), rows)


@rewards_app.command("score")
def rewards_score(
    name: str = typer.Argument(..., help="Reward model name (see `flowopd rewards list`)."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="One prompt for all images, or one per image (repeat)."),
    metadata: str | None = typer.Option(
        None, "--metadata", help="JSON object (or a .json/.jsonl file) of per-prompt metadata, e.g. GenEval clauses."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:
    """Score images with one reward model."""
    from flowopd.errors import InputError
    from flowopd.reward_models import get_reward_class

    cls = get_reward_class(name)  # unknown names fail here, before any image is read
    if len(prompt) not in (1, len(images)):
        raise InputError(f"got {len(images)} images and {len(prompt)} prompts; pass one --prompt for all images or one per image")
    prompts = prompt * len(images) if len(prompt) == 1 else list(prompt)
    _refuse_blank_prompts(prompts)
    metas = None
    if metadata:
        metas = _parse_metadata(metadata, len(images))
    pil = [_load_image(p) for p in images]
    from flowopd.reward_models import load_reward

    reward = load_reward(name)  # a constructor that fails is named
    scores = reward.score(pil, prompts, metas)
    records = scores.to_records()
    if fmt is Format.json:
        print(json.dumps([{"image": str(p), "prompt": t, **r} for p, t, r in zip(images, prompts, records)], indent=2))
        _fail_if_all_failed(name, records)
        return
    rows = [
        (str(p), styled(("failed", "red")), "-", r["details"].get("error", "")[:120])
        if r.get("failed")
        else (str(p), f"{r['raw']:.4f}", f"{r['normalized']:.4f}", json.dumps(r["details"])[:120])
        for p, r in zip(images, records)
    ]
    _print_table(f"{name} (version {cls.version})", ("image", "raw", "normalized", "details"), rows)
    _fail_if_all_failed(name, records)


def _fail_if_all_failed(name: str, records: list[dict]) -> None:
    """Exit non-zero, naming the first reason, when the reward scored no image at all."""
    if records and all(r.get("failed") for r in records):
        _fail(f"every image failed to score with {name}: {records[0]['details'].get('error', 'no reason given')}")


@rewards_app.command("agreement")
def rewards_agreement(
    pairs: Path = typer.Option(..., "--pairs", help="JSONL of {prompt, images: [a, b, ...], preferred: 0|1 | rank: [...]} records."),
    reward: list[str] = typer.Option(
        [], "--reward", "-r", help="Reward to test (repeat); default: every available reward that needs no metadata."
    ),
    out: Path | None = typer.Option(None, "--out", help="Also write the results as JSON here."),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:
    """Each reward's accuracy at picking the human-preferred image (HPD v2 / Pick-a-Pic pairs), with a 95% bootstrap CI."""
    from flowopd.benchmarks.agreement import load_pairs, run_agreement
    from flowopd.reward_models import get_reward_class, list_rewards
    from flowopd.runinfo import atomic_file

    records = load_pairs(pairs)
    names = list(reward) or [i.name for i in list_rewards() if i.available and not get_reward_class(i.name).needs_metadata]
    for n in names:
        ok, why = get_reward_class(n).weights_status()
        if not ok:
            _fail(f"reward {n!r} is not available: {why}")
    n_cmp = sum(len(r.comparisons) for r in records)
    err_console.print(f"{len(records)} records, {n_cmp} comparisons, {len(names)} rewards")
    rows = run_agreement(records, names, progress=lambda what, k, n: err_console.print(f"[{k}/{n}] {what}"))
    result = {"pairs": str(pairs), "records": len(records), "comparisons": n_cmp, "rewards": rows}
    if out is not None:
        with atomic_file(out) as f:
            f.write(json.dumps(result, indent=2).encode())
    if fmt is Format.json:
        print(json.dumps(result, indent=2))
        return
    table_rows = [
        (r["reward"], f"{r['mean']:.3f}", f"[{r['lo']:.3f}, {r['hi']:.3f}]", str(r["n"]), str(r["dropped_failed"]))
        for r in sorted(rows, key=lambda r: -r["mean"] if r["n"] else 1.0)
    ]
    _print_table(
        f"agreement with human preference ({pairs.name})", ("reward", "accuracy", "95% CI", "comparisons", "dropped (failed)"), table_rows
    )


def _parse_metadata(text: str, n: int) -> list[dict]:
    from flowopd.errors import InputError

    path = Path(text)
    try:
        if path.suffix in (".json", ".jsonl") and path.is_file():
            raw = path.read_text()
            items = [json.loads(line) for line in raw.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(raw)
        else:
            items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--metadata is not valid JSON ({exc.msg}); pass a JSON object or a .json/.jsonl file") from None
    if isinstance(items, dict):
        items = [items] * n
    if not isinstance(items, list) or len(items) != n or not all(isinstance(i, dict) for i in items):
        raise InputError(f"--metadata must be one JSON object or a list of {n} objects (one per image)")
    return items


# ------------------------------------------------------------------ weights


@weights_app.command("list")
def weights_list(fmt: Format = typer.Option(Format.table, "--format", help="table or json.")) -> None:
    """Known weight sets, whether they are present, and how to get them."""
    from flowopd.models import KNOWN_WEIGHTS

    rows = [
        {
            "name": w.name,
            "kind": w.kind,
            "present": w.present,
            "path": str(w.path),
            "size_mb": round(w.size_bytes() / 1e6, 2),
            "sha256": w.digest(),
            "how_to_get": w.how_to_get,
            "description": w.description,
        }
        for w in KNOWN_WEIGHTS.values()
    ]
    if fmt is Format.json:
        print(json.dumps(rows, indent=2))
        return
    table_rows = [(r["name"], _yes_no(r["present"]), str(r["size_mb"]), (r["sha256"] or "-")[:12], r["path"]) for r in rows]
    _print_table("weights", ("name", "present", "size MB", "sha256", "path"), table_rows)


def _reward_sets(name: str | None) -> dict[str, list[str]]:
    """reward name -> its weight-set names; ``name`` may be a reward or a weight set (then the rewards that use it)."""
    from flowopd.reward_models import get_reward_class, names
    from flowopd.reward_models.weights import WEIGHT_SETS

    by_reward = {}
    for n in names():
        try:
            by_reward[n] = list(get_reward_class(n).weight_sets)
        except Exception:  # a broken plugin is reported by `rewards list`
            continue
    if name is None:
        return by_reward
    if name in by_reward:
        return {name: by_reward[name]}
    if name in WEIGHT_SETS:
        return {r: [name] for r, sets in by_reward.items() if name in sets} or {"(unused)": [name]}
    get_reward_class(name)  # raises with "did you mean"
    return {}


@weights_app.command("status")
def weights_status(
    name: str | None = typer.Argument(None, help="A reward (e.g. pickscore_v1) or a weight set; all rewards if omitted."),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:
    """Each reward's required weight files: where they were looked for, and whether they were found."""
    from flowopd.reward_models.weights import WEIGHT_SETS, env_var, status_rows, weights_dir

    by_reward = _reward_sets(name)
    rows = []
    for reward, sets in by_reward.items():
        for row in status_rows({s: WEIGHT_SETS[s] for s in sets}):
            rows.append({"reward": reward, **row, "override_env": env_var(row["set"])})
    if fmt is Format.json:
        print(json.dumps({"weights_dir": str(weights_dir()), "files": rows}, indent=2))
        return
    console.print(f"weights dir: {weights_dir()} (set $FLOWOPD_WEIGHTS_DIR to move it; ${{FLOWOPD_WEIGHTS_<SET>}} overrides one set)")
    table_rows = [(r["reward"], r["set"], r["file"], _yes_no(r["found"]), r["path"], r["chosen_by"]) for r in rows]
    _print_table("reward weights", ("reward", "set", "file", "found", "looked for at", "chosen by"), table_rows)
    rewards_without = [r for r, sets in by_reward.items() if not sets]
    if rewards_without:
        console.print(f"no weight files needed: {', '.join(rewards_without)}")


@weights_app.command("download")
def weights_download(
    name: str | None = typer.Argument(None, help="A reward or a weight set; every set of every reward if omitted."),
) -> None:
    """Fetch reward weights into the weights dir (from the hub, or the set's URL); offline this fails at once."""
    from flowopd.reward_models.weights import WEIGHT_SETS, download

    wanted = sorted({s for sets in _reward_sets(name).values() for s in sets})
    if not wanted:
        from flowopd.reward_models import get_reward_class

        available, why = get_reward_class(name).weights_status() if name else (True, None)
        console.print(f"{name} needs no weight files" + ("" if available else f"; to run it: {why}"))
        return
    todo = [WEIGHT_SETS[s] for s in wanted if WEIGHT_SETS[s].missing()]
    for s in wanted:
        if not WEIGHT_SETS[s].missing():
            console.print(f"{s}: present at {WEIGHT_SETS[s].path()}")
    for ws in todo:
        path = download(ws, progress=lambda msg: err_console.print(f"downloading {msg}"))
        console.print(f"{ws.name}: downloaded to {path}")


# ------------------------------------------------------------------ prompts


@prompts_app.command("list")
def prompts_list(fmt: Format = typer.Option(Format.table, "--format", help="table or json.")) -> None:
    """The named prompt sets: task tag, upstream size, whether the file is here, and where it was looked for."""
    from flowopd.benchmarks.prompt_sets import GROUPS, PROMPT_SETS, data_dir

    rows = [
        {
            "name": s.name,
            "task": s.task,
            "size": s.size,
            "present": s.present(),
            "path": str(s.path()),
            "url": s.url,
            "description": s.description,
        }
        for s in PROMPT_SETS.values()
    ]
    if fmt is Format.json:
        print(json.dumps({"data_dir": str(data_dir()), "groups": GROUPS, "sets": rows}, indent=2))
        return
    console.print(f"data dir: {data_dir()} (set $FLOWOPD_DATA_DIR to move it; groups: {', '.join(GROUPS)})")
    _print_table(
        "prompt sets",
        ("name", "task", "prompts", "present", "path"),
        [(r["name"], r["task"], "?" if r["size"] is None else str(r["size"]), _yes_no(r["present"]), r["path"]) for r in rows],
    )


@prompts_app.command("download")
def prompts_download(name: str = typer.Argument(..., help="A set (geneval, ocr, ...) or a group (t2i-compbench, hpsv2).")) -> None:
    """Fetch a prompt set from its upstream URL into the data dir (needs the network)."""
    from flowopd.benchmarks.prompt_sets import download

    for path in download(name):
        console.print(f"{path}")


@prompts_app.command("show")
def prompts_show(
    spec: str = typer.Argument(..., help="A set, a group, or a prompt file."),
    limit: int = typer.Option(10, "--limit", "-n", help="How many prompts to print (0: all)."),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:
    """Print a prompt set's prompts with their task tag and metadata (a malformed line is named by file and line)."""
    from flowopd.benchmarks.prompt_sets import resolve

    prompts = resolve(spec)
    shown = prompts if limit == 0 else prompts[:limit]
    if fmt is Format.json:
        print(json.dumps([{"prompt": p.text, "task": p.task, "metadata": p.metadata} for p in shown], indent=2))
        return
    rows = [(str(i), p.task or "-", p.text, json.dumps(p.metadata)[:80]) for i, p in enumerate(shown)]
    _print_table(f"{spec}: {len(prompts)} prompts", ("#", "task", "prompt", "metadata"), rows)


# ------------------------------------------------------------------ train


def _train(
    cfg,
    out: Path,
    resume: bool,
    command: str = "train",
    recipe: str | None = None,
    dry_run: bool = False,
    processes: int | None = None,
    fmt: Format = Format.table,
) -> None:
    """Run the one trainer with a progress bar (reward, KL, clip fraction) and say where the LoRA is.

    ``dry_run``: print the resolved plan (:mod:`flowopd.plan`) and stop, loading no model; only a batch/process
    arithmetic error fails it.
    """
    if dry_run:
        from flowopd.plan import dry_run as plan_dry_run

        text, error = plan_dry_run(cfg, command, recipe, processes, fmt.value)
        if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, one copy of the plan
            print(text)
        if error:
            _fail(error)
        return
    if processes is not None:
        _fail("--processes only plans a --dry-run; a run takes its process count from `accelerate launch --num_processes`")
    from flowopd.trainer import Trainer

    t0 = time.time()
    trainer = Trainer(cfg, out, resume=resume)  # checks the plan and the output folder before any compute
    show = trainer.accelerator.is_main_process
    if show and trainer.restarted:
        console.print(
            f"{out} held this run stopped before its first checkpoint (nothing to resume): starting it over in place", markup=False
        )
    with progress_bar(f"train {cfg.name}", cfg.steps) as advance:

        def tick(step: int, m: dict[str, float]) -> None:
            if show:
                fields = {k: m[k] for k in ("reward", "kl", "mar", "clip_frac") if k in m}
                advance(completed=step, **fields)

        try:
            lora = trainer.train(tick)
        except KeyboardInterrupt:
            lora = None
    if lora is None:  # said after the progress bar has closed
        from flowopd.run_folder import checkpoints

        done = checkpoints(out)
        kept = f"kept checkpoint {done[-1]}" if done else "no checkpoint yet (the same command restarts it in place)"
        _interrupted(f"training stopped during step {trainer.step + 1}", kept, _rerun_command("--resume" if done else None))
    if show:
        console.print(f"LoRA: {lora}  (diffusers format; {trainer.step} steps in {(time.time() - t0) / 60:.1f} min; log: {out}/log.jsonl)")


def _load_train_config(config: str, overrides: dict):
    from flowopd.config import load_config
    from flowopd.train_config import TrainConfig, recipe_path

    return load_config(TrainConfig, recipe_path(config), overrides)


# options shared by every `flowopd train` command
TrainSteps = Annotated[int | None, typer.Option("--steps", min=1, help="Training steps.")]
TrainSeed = Annotated[int | None, typer.Option("--seed", help="Seed.")]
TrainModel = Annotated[
    str | None, typer.Option("--model", "-m", help="Base model to train on (default: the recipe's, e.g. mini-base; or a model folder).")
]
TrainThreads = Annotated[int | None, typer.Option("--threads", min=0, help="CPU threads (0: all cores, torch's default).")]
TrainResume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
TrainCheckpointEvery = Annotated[
    int | None, typer.Option("--checkpoint-every", min=1, help="Write a resumable checkpoint every N steps (default: the recipe's).")
]
TrainDryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved plan (batch per GPU, checks, memory estimate) and exit; loads no model.")
]
TrainProcesses = Annotated[
    int | None,
    typer.Option("--processes", min=1, help="With --dry-run: the process (GPU) count to plan for (default $WORLD_SIZE, else 1)."),
]
TrainPlanFormat = Annotated[Format, typer.Option("--format", help="With --dry-run: table (text) or json.")]


@train_app.command("teacher")
def train_teacher(
    reward: str | None = typer.Option(None, "--reward", "-r", help="Reward to train on (see `flowopd rewards list`)."),
    config: str | None = typer.Option(None, "--config", "-c", help="YAML file or shipped recipe (e.g. mini/teacher-text)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/teacher-<reward>)."),
    model: TrainModel = None,
    steps: TrainSteps = None,
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    checkpoint_every: TrainCheckpointEvery = None,
    resume: TrainResume = False,
    dry_run: TrainDryRun = False,
    processes: TrainProcesses = None,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Train a GRPO teacher on one reward (SPEC section 4); writes the LoRA in the diffusers format."""
    from flowopd.teachers import MINI_TASK_REWARDS

    if reward is None and config is None:
        _fail("pass --reward NAME (see `flowopd rewards list`) or --config RECIPE (e.g. mini/teacher-text)")
    overrides: dict = {"steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every, "model": model}
    if config is None:
        task = {r: t for t, r in MINI_TASK_REWARDS.items()}.get(reward)
        config = f"mini/teacher-{task or 'preference'}"
        if task is None:  # a reward without its own mini task (a plugin): prompts from every task
            from flowopd.mini.world import DEFAULT_TASK_MIX

            overrides["tasks"] = dict(DEFAULT_TASK_MIX)
    if reward is not None:
        overrides.update(rewards={reward: 1.0}, task_rewards={}, name=f"teacher-{reward}")
    cfg = _load_train_config(config, overrides)
    _train(cfg, out or Path("runs") / cfg.name, resume, "teacher", config, dry_run, processes, fmt)


class MixVariant(str, Enum):
    weighted = "weighted"
    alternate = "alternate"


@train_app.command("mix")
def train_mix(
    variant: MixVariant = typer.Option(
        MixVariant.weighted, "--variant", help="weighted (one 3:1:1 reward) or alternate (datasets by epoch ratio)."
    ),
    config: str | None = typer.Option(None, "--config", "-c", help="YAML file or shipped recipe (default mini/mix-<variant>)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/mix-<variant>)."),
    model: TrainModel = None,
    steps: TrainSteps = None,
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    checkpoint_every: TrainCheckpointEvery = None,
    resume: TrainResume = False,
    dry_run: TrainDryRun = False,
    processes: TrainProcesses = None,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Train a GRPO-Mix baseline: several rewards in one GRPO run (SPEC section 4, the paper's seesaw)."""
    config = config or f"mini/mix-{variant.value}"
    cfg = _load_train_config(
        config, {"steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every, "model": model}
    )
    _train(cfg, out or Path("runs") / cfg.name, resume, "mix", config, dry_run, processes, fmt)


class OPDObjective(str, Enum):
    kl = "kl"
    kl_pg = "kl_pg"
    paper = "paper"


class ColdStartMethod(str, Enum):
    merge = "merge"
    sft = "sft"


class MergeMethod(str, Enum):
    cat = "cat"
    svd = "svd"
    ties = "ties"
    dare_linear = "dare_linear"
    elementwise = "elementwise"


@train_app.command("coldstart")
def train_coldstart(
    method: ColdStartMethod = typer.Option(ColdStartMethod.merge, "--method", help="merge the teachers' LoRAs, or SFT on their images."),
    merge: MergeMethod | None = typer.Option(
        None, "--merge", help="cat (default: the exact average of dW), svd, ties, dare_linear, elementwise (the release's)."
    ),
    config: str = typer.Option("mini/opd", "--config", "-c", help="OPD recipe naming the teachers (YAML file or shipped recipe)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="LoRA folder to write (default runs/coldstart-sft, or runs/coldstart-merge-<merge> for a merge)."
    ),
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    dry_run: TrainDryRun = False,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Make the student's starting LoRA from the teachers (SPEC section 5); writes it in the diffusers format."""
    from flowopd.coldstart import cold_start
    from flowopd.plan_checks import check_plan

    cfg = _load_train_config(config, {"seed": seed, "threads": threads})
    if cfg.opd is None:
        _fail(f"config {config} has no opd section (no teachers to start from); use an OPD recipe such as mini/opd")
    cfg = cfg.with_cold_start(method=method.value, from_lora=None, **({"merge": merge.value} if merge else {}))
    if dry_run:  # one process: no --processes here
        _train(cfg, out or Path("runs"), False, "coldstart", config, dry_run=True, fmt=fmt)
        return
    check_plan(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    label = method.value if method == ColdStartMethod.sft else f"merge-{cfg.opd.cold_start.merge}"
    out = out or Path("runs") / f"coldstart-{label}"
    t0 = time.time()
    with progress_bar(f"cold start ({label})", None) as advance:

        def show(stage: str, done: int, total: int) -> None:
            advance(description=f"cold start: {stage}", completed=done, total=total)

        folder = cold_start(cfg, out, progress=show)
    console.print(f"LoRA: {folder}  (cold start {label} of {len(cfg.opd.teachers)} teachers; diffusers format; {time.time() - t0:.0f} s)")


@train_app.command("opd")
def train_opd(
    config: str = typer.Option("mini/opd", "--config", "-c", help="YAML file or shipped recipe (default mini/opd)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>, i.e. runs/opd)."),
    objective: OPDObjective | None = typer.Option(
        None, "--objective", help="The OPD objective (SPEC section 6; default: the recipe's, kl)."
    ),
    model: TrainModel = None,
    steps: TrainSteps = None,
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    checkpoint_every: TrainCheckpointEvery = None,
    resume: TrainResume = False,
    dry_run: TrainDryRun = False,
    processes: TrainProcesses = None,
    fmt: TrainPlanFormat = Format.table,
) -> None:
    """Distil the teachers into one student by on-policy distillation with MAR (SPEC section 6).

    With no arguments: the four shipped mini teachers, from a merge cold start.
    """
    cfg = _load_train_config(
        config, {"steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every, "model": model}
    )
    if cfg.opd is None:
        _fail(f"config {config} has no opd section; use an OPD recipe such as mini/opd (or `flowopd train teacher` for GRPO)")
    if objective is not None:
        from flowopd.config import build_config
        from flowopd.train_config import OPDConfig

        opd = build_config(OPDConfig, {**cfg.opd.model_dump(), "objective": objective.value}, "--objective")
        cfg = cfg.model_copy(update={"opd": opd})
    _train(cfg, out or Path("runs") / cfg.name, resume, "opd", config, dry_run, processes, fmt)


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


@app.command("eval")
def eval_cmd(
    suite: list[str] = typer.Option(
        ["all"],
        "--suite",
        "-s",
        help="A suite (mini, geneval, geneval@hf-m2f, ocr, pickscore, deqa, quality, hpsv2, t2i-compbench) or all; repeatable.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="mini-student (default), mini-base, a shipped teacher, a model or LoRA folder, a diffusers SD3 folder, or sd3:<hub id>.",
    ),
    lora: Path | None = typer.Option(None, "--lora", help="A diffusers-format LoRA on an SD3 base."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/eval-<model>); an unfinished one is resumed."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Prompts per group (GenEval tag, HPS style, T2I-CompBench category, mini task)."
    ),
    images: int | None = typer.Option(None, "--images-per-prompt", min=1, help="Override the suites' images per prompt."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="ODE steps (default: the model's; SD3 40)."),
    cfg: float | None = typer.Option(None, "--cfg", min=1.0, help="Guidance scale (default: the model's; SD3 4.5)."),
    resolution: int | None = typer.Option(None, "--resolution", min=8, help="Image size in pixels (SD3 default 512)."),
    seed: int = typer.Option(0, "--seed", help="Suite seed: image seeds derive from (prompt, image index, seed)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images sampled per batch (per process)."),
    strict: bool = typer.Option(False, "--strict", help="Fail when any requested suite cannot run."),
    cache: Path | None = typer.Option(None, "--cache", help="Score cache (default $FLOWOPD_CACHE_DIR/scores.sqlite, ~/.cache/flowopd)."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write report.md / report.html into the run folder."),
    prompts: str | None = typer.Option(
        None, "--prompts", help="Build the suite on the fly: a prompt set (see `flowopd prompts list`), a .txt/.jsonl file, or mini."
    ),
    reward: list[str] = typer.Option([], "--reward", "-r", help="With --prompts: a reward to score every image with (repeatable)."),
) -> None:
    """Evaluate a model on benchmark suites: images, per-sample JSONL, summary.json with CIs, and a report.

    `--prompts SET_OR_FILE --reward NAME` evaluates any reward, a plugin's included, on any prompts (suite `custom`).

    `flowopd eval` alone evaluates the shipped mini student on every suite it can run and lists the others with the reason.
    Under `accelerate launch` the images are split across processes.
    """
    from diffusers.utils import logging as diffusers_logging

    from flowopd.benchmarks.runner import EvalConfig, run_eval
    from flowopd.models import KNOWN_WEIGHTS

    if os.environ.get("FLOWOPD_DEBUG") != "1":
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components": ours shows the eval's progress

    if model is None:
        model = "mini-student" if KNOWN_WEIGHTS["mini-student"].present else "mini-base"
    if (prompts is not None or reward) and suite != ["all"]:
        _fail("pass either --suite or --prompts with --reward (a suite built on the fly), not both")
    ecfg = EvalConfig(
        prompts=prompts,
        rewards=list(reward),
        suites=suite,
        model=model,
        lora=str(lora) if lora else None,
        limit=limit,
        images_per_prompt=images,
        steps=steps,
        cfg=cfg,
        resolution=resolution,
        seed=seed,
        batch_size=batch_size,
        strict=strict,
    )
    from flowopd.models import resolve_model

    ref = resolve_model(model, ecfg.lora)
    out = out or Path("runs") / f"eval-{ref.label}"
    t0 = time.time()
    with progress_bar(f"eval {ref.label}", None) as advance:

        def show(stage: str, done: int, total: int) -> None:
            advance(description=f"eval: {stage}", completed=done, total=total)

        try:
            summary = run_eval(ecfg, out, cache_path=cache, progress=show)
        except KeyboardInterrupt:
            summary = None
    if summary is None:  # said after the progress bar has closed
        n = len(list((out / "images").glob("*.json"))) if (out / "images").is_dir() else 0
        _interrupted("evaluation stopped", f"{n} finished images kept in {out / 'images'}", _rerun_command())
    if not summary:  # not the main process
        return
    for w in summary.get("warnings", []):
        warn(w)
    rows = []
    for name, s in summary["suites"].items():
        for key, m in s["metrics"].items():
            ci = m.get("note") or f"[{m['ci95'][0]:.4g}, {m['ci95'][1]:.4g}]" + (" (clipped to range)" if m.get("clipped") else "")
            rows.append((name, key, f"{m['mean']:.4g}", ci, str(m["n"])))
    _print_table(f"{ref.label}: metrics (mean, 95% CI, n)", ("suite", "metric", "mean", "95% CI", "n"), rows)
    _print_skipped(summary["skipped"])
    img, c = summary["images"], summary["cache"]
    console.print(
        f"images: {img['generated']} generated, {img['reused']} reused from {out}/images; "
        f"scores: {c['hits']} from the cache, {c['misses']} computed ({c['path']})"
    )
    if not no_report:
        from flowopd.benchmarks.html_report import write_run_report

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
    baselines: Path | None = typer.Option(
        None,
        "--baselines",
        help="Published numbers to show beside the runs, marked as reported: a CSV or JSON of model, metric, value, source "
        "(or a shipped file by name: flow-opd-paper).",
    ),
    baseline: Path | None = typer.Option(None, "--baseline", "-b", help="A mini run folder to compare every run with, image by image."),
) -> None:
    """A leaderboard like the paper's tables: mean [95% CI] and n per metric, best and second best marked, published rows beside."""
    from flowopd.benchmarks import report as rep
    from flowopd.runinfo import atomic_file

    if fmt is ReportFormat.html and out is None:
        _fail("--format html writes one page with every image embedded; pass --out report.html")
    lb = rep.build_report(results, baselines, baseline)
    if fmt is ReportFormat.md:
        text = rep.to_markdown(lb)
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
    baselines: Path | None = typer.Option(
        None,
        "--baselines",
        help="Published numbers to show beside the runs (CSV or JSON of model, metric, value, source; or flow-opd-paper).",
    ),
) -> None:
    """A static leaderboard site: index.html, one page per model, results.json and model-index YAML; relative links only."""
    from flowopd.benchmarks.html_report import publish as write_site
    from flowopd.benchmarks.report import build_report

    lb = build_report(results, baselines)
    write_site(lb, out)
    console.print(f"wrote {out}/index.html, {len(lb.runs)} model page(s) in models/, results.json and model-index/")


# ------------------------------------------------------------------ mini


@mini_app.command("pretrain")
def mini_pretrain(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of PretrainConfig values."),
    out: Path = typer.Option(Path("runs/mini-base"), "--out", "-o", help="Model folder to write."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default 4000, the shipped base)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step (default 64)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (default 0)."),
    threads: int | None = typer.Option(None, "--threads", min=0, help="CPU threads (0: all cores, torch's default)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Pre-train the mini base by flow matching (eq. 1) on rendered data; reproduces the shipped base."""
    from flowopd.config import load_config, save_config
    from flowopd.mini.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, config, {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads})
    from flowopd.mini.pretrain import pretrain

    t0 = time.time()
    with progress_bar("pretrain", cfg.steps) as advance:
        if resume:
            advance(0, completed=_checkpoint_step(out))
        pretrain(cfg, out, progress=lambda step, loss: advance(loss=loss), resume=resume)
    save_config(cfg, out / "config.yaml")
    console.print(f"wrote the EMA model to {out}/ after {cfg.steps} steps in {(time.time() - t0) / 60:.1f} min")


@mini_app.command("reproduce")
def mini_reproduce(
    out: Path = typer.Option(Path("runs/reproduce"), "--out", "-o", help="Folder for every model, evaluation and table."),
    config: str = typer.Option("mini/opd", "--config", "-c", help="The OPD recipe the students use."),
    limit: int = typer.Option(32, "--limit", min=1, help="Held-out prompts per task (compose: per tag)."),
    steps: TrainSteps = None,
) -> None:
    """The mini analogue of the paper's Tables 1, 2 and 4: base, teachers, GRPO-Mix, cold starts, OPD and its ablations.

    Resumable: run it again with the same --out to continue after an interruption.
    """
    from flowopd.mini.reproduce import reproduce

    t0 = time.time()
    with progress_bar("reproduce", None) as advance:

        def show(stage: str, done: int, total: int) -> None:
            advance(description=f"reproduce: {stage}", completed=done, total=total)

        reproduce(out, config=config, limit=limit, steps=steps, progress=show)
    console.print((out / "results.md").read_text(), markup=False, highlight=False)
    console.print(f"wrote {out}/results.md, results.json and evals/<model>/ (summary.json per model) in {(time.time() - t0) / 60:.1f} min")


def _checkpoint_step(out: Path) -> int:
    info = out / "run.json"
    return int(json.loads(info.read_text())["pretrain"]["step"]) if info.is_file() else 0


@mini_app.command("prompts")
def mini_prompts(
    task: str = typer.Option("all", "--task", help="compose, text, preference, quality or all."),
    n: int = typer.Option(10, "--n", min=1, help="Prompts per task."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt draw (the same seed lists the same prompts)."),
    split: str = typer.Option("test", "--split", help="test (held-out), train or all."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write JSONL here (GenEval metadata format plus 'task')."),
) -> None:
    """List mini-world prompts with their metadata (JSONL)."""
    from flowopd.mini import world

    tasks = list(world.TASKS) if task == "all" else [task]
    try:
        recs = [r for t in tasks for r in world.make_prompts(t, n, seed, split=split)]
    except ValueError as exc:
        _fail(str(exc))
    lines = [json.dumps(r.to_json()) for r in recs]
    if out is None:
        print("\n".join(lines))
        return
    from flowopd.runinfo import atomic_file

    with atomic_file(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    console.print(f"wrote {len(lines)} prompts to {out}")


@mini_app.command("render")
def mini_render(
    prompt: str = typer.Option(..., "--prompt", "-p", help="A mini-world prompt."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data sample's random layout, finish and misquotes."),
    scale: int = typer.Option(8, "--scale", min=1, max=64, help="Nearest-neighbour upscale of the 32 px image."),
    ideal: bool = typer.Option(False, "--ideal", help="Draw what the judges prefer (centred, clean, spelt right), not a data sample."),
) -> None:
    """Render a prompt as the base's training data draw it (or, with --ideal, as the judges prefer it)."""
    import numpy as np

    from flowopd.mini import world

    if out.suffix.lower() != ".png":
        _fail(f"--out {out} must end in .png")
    try:
        rec = world.parse_prompt(prompt)
    except ValueError as exc:
        _fail(str(exc))
    _save_png(world.render(rec, np.random.default_rng(seed), ideal=ideal), out, scale)
    console.print(f"wrote {out}  (task {rec.task}, {json.dumps(rec.metadata)})")


# ------------------------------------------------------------------ entry point


def _show_plugin_warning(default, category):
    """Plugin warnings as one ``warning:`` line; every other warning as Python shows it."""

    def show(message, cat, *args, **kwargs):
        if issubclass(cat, category):
            warn(str(message))
        else:
            default(message, cat, *args, **kwargs)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors print as one line (traceback with --debug) and exit non-zero."""
    args = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = args
    import warnings

    from flowopd.errors import PluginWarning

    warnings.showwarning = _show_plugin_warning(warnings.showwarning, PluginWarning)
    if "--debug" in args[1:]:  # accepted anywhere on the line: it belongs to the root command
        args = ["--debug"] + [a for a in args if a != "--debug"]
    debug = "--debug" in args or os.environ.get("FLOWOPD_DEBUG") == "1"
    try:
        rv = app(args=args, prog_name="flowopd", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return 130
    except typer.TyperException as exc:  # option-parser errors (Typer's vendored click): bad option, bad value
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has already printed the help
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "flowopd"
            error(f"{exc.format_message()} (see `{where} --help`)")
        return getattr(exc, "exit_code", 2)
    except Exception as exc:
        if debug:
            raise
        error(one_line(exc))
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
