"""`flowopd rewards list | score | agreement | serve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from flowopd.cli.app import Format, _fail, _load_image, _print_table, _refuse_blank_prompts, _yes_no, rewards_app
from flowopd.cli.ui import err_console, styled, warn_once
from flowopd.runinfo import parse_jsonl

# ------------------------------------------------------------------ rewards


@rewards_app.command("list")
def rewards_list(fmt: Format = typer.Option(Format.table, "--format", help="table or json.")) -> None:
    """Every reward model: name, version, where it comes from, and whether its weights are present."""
    import dataclasses

    from flowopd.reward_models import list_rewards
    from flowopd.reward_models.registry import REWARDS

    infos = list_rewards()
    for msg in REWARDS.plugin_errors:  # said here unless this process has warned already
        warn_once(msg)
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


@rewards_app.command("serve")
def rewards_serve(
    name: str = typer.Argument(..., help="Reward model name (see `flowopd rewards list`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the server to the network (set a token)."),
    port: int = typer.Option(8765, "--port", help="Port to bind (0: any free port; the log says which)."),
    device: str = typer.Option("cpu", "--device", help="Where the reward runs (cpu, cuda, cuda:1, ...)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most images scored in one call; concurrent requests are batched up to it."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body accepted (413 above it)."),
) -> None:
    """Serve one reward over HTTP (JSON, no pickle) so training and evaluation can use it from another environment."""
    import logging

    from flowopd.reward_models import get_reward_class
    from flowopd.reward_models.serve import TOKEN_ENV, ServeSettings, make_server, require_fastapi

    settings = ServeSettings(name, host, port, device, max_batch, max_body_mb)
    require_fastapi()
    cls = get_reward_class(name)
    if getattr(cls, "target", None):  # a client of another server: serving it would only relay
        from flowopd.reward_models.remote import url_env

        _fail(f"{name} is a remote reward here; serve the reward itself (a name without remote:, ${url_env(cls.target)} unset)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(TOKEN_ENV):
        warn_once(f"serving on {host} without a token: anyone who can reach it can use it; set ${TOKEN_ENV}")
    err_console.print(f"loading {name} on {device} ...")
    server = make_server(settings)
    server.run()


def _parse_metadata(text: str, n: int) -> list[dict]:
    from flowopd.errors import InputError

    path = Path(text)
    try:
        if path.suffix in (".json", ".jsonl") and path.is_file():
            raw = path.read_text()
            fix = "pass a JSON object or a .json/.jsonl file"
            items = [rec for _, rec in parse_jsonl(path, raw, fix)] if path.suffix == ".jsonl" else json.loads(raw)
        else:
            items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--metadata is not valid JSON ({exc.msg}); pass a JSON object or a .json/.jsonl file") from None
    if isinstance(items, dict):
        items = [items] * n
    if not isinstance(items, list) or len(items) != n or not all(isinstance(i, dict) for i in items):
        raise InputError(f"--metadata must be one JSON object or a list of {n} objects (one per image)")
    return items
