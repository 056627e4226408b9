"""`flowopd prompts list | download | show`."""

from __future__ import annotations

import json

import typer

from flowopd.cli.app import Format, _print_table, _yes_no, prompts_app
from flowopd.cli.ui import console

# ------------------------------------------------------------------ prompts


@prompts_app.command("list")
def prompts_list(fmt: Format = typer.Option(Format.table, "--format", help="table or json.")) -> None:
    """The named prompt sets: task tag, upstream size, whether the file is here, and where it was looked for."""
    from flowopd.benchmarks.prompt_sets import GROUPS, PROMPT_SETS, data_dir
    from flowopd.cli.ui import warn, warn_once
    from flowopd.errors import FlowOPDError

    rows = []
    for name in PROMPT_SETS:
        try:
            s = PROMPT_SETS[name]
        except FlowOPDError as exc:  # a broken plugin is said, and the other sets are still listed
            warn(str(exc))
            continue
        rows.append(
            {
                "name": s.name,
                "task": s.task,
                "size": s.size,
                "present": s.present(),
                "path": str(s.path()),
                "url": s.url,
                "description": s.description,
                "source": PROMPT_SETS.source(name),
            }
        )
    for msg in PROMPT_SETS.plugin_errors:
        warn_once(msg)
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
