"""`flowopd weights list | status | download`."""

from __future__ import annotations

import json

import typer

from flowopd.cli.app import Format, _print_table, _yes_no, weights_app
from flowopd.cli.ui import console, err_console

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
