"""The Typer application, its command groups and the helpers the commands share (heavy imports stay inside commands)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flowopd.cli.ui import console, err_console, styled

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
suites_app = typer.Typer(rich_markup_mode=None, help="Evaluation suites, built in and from plugins.", no_args_is_help=True)
app.add_typer(suites_app, name="suites")


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


# ------------------------------------------------------------------ options shared by every `flowopd train` command (and mini reproduce)

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
