"""Training curves for the reports: a run's ``log.jsonl`` and its evaluations during training (``RUN/evals``).

Groups, each one chart against steps (the x label gives the samples a step):
the training reward, the loss, the KL terms, the clip fraction, the held-out
metrics of the evaluations (each suite's headline metrics; ``eval/...`` in the
log) and the image statistics the alarms watch. Steps where an alarm fired are
marked on every chart (:mod:`flowopd.watch`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flowopd.benchmarks.charts import line_chart

GROUPS = ("reward", "loss", "kl", "clip fraction", "held-out", "held-out (raw scale)", "images")
MAX_SERIES = 10


def train_log_path(run: Any) -> Path | None:
    """The trainer's ``log.jsonl`` behind an evaluation run's model (its summary names it), or None."""
    p = run.model.get("train_log")
    if not isinstance(p, str) or not p:
        return None
    path = Path(p)
    return path if path.is_absolute() else run.folder / path


def read_train_log(path: Path) -> list[dict[str, float]]:
    """The trainer's log.jsonl: per line, the numeric fields (a bad line or a non-numeric value is skipped)."""
    out = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        nums = {k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        nums.setdefault("step", float(i + 1))
        out.append(nums)
    return out


def group_of(key: str, held_out: set[str]) -> str | None:
    """The chart a logged key belongs on (None: not drawn)."""
    if key.startswith("eval/image/") and key != "eval/image/jpeg_bytes":
        return "images"
    if key.startswith("eval/"):
        return "held-out" if key in held_out else None
    if key == "reward" or key.startswith("reward/"):
        return "reward"
    if key == "loss" or key.startswith("loss/"):
        return "loss"
    if key.startswith("kl") or key == "mar":
        return "kl"
    if key == "clip_frac":
        return "clip fraction"
    return None


def held_out_keys(run_folder: Path, logged: set[str]) -> set[str]:
    """The evaluations' headline metrics (``eval/<suite>/<metric>``), else each suite's top-level metrics, at most
    ``MAX_SERIES``; read from the run's last evaluation."""
    evals = sorted((run_folder / "evals").glob("step-*/summary.json"))
    keys: list[str] = []
    if evals:
        summary = json.loads(evals[-1].read_text())
        for suite, s in (summary.get("suites") or {}).items():
            headline = s.get("headline") or {}
            names = list(headline.values()) if headline else [m for m in s.get("metrics", {}) if "/" not in m]
            keys += [f"eval/{suite}/{m}" for m in names]
    if not keys:
        keys = sorted(k for k in logged if k.startswith("eval/") and not k.startswith("eval/image/") and k != "eval/seconds")
    return {k for k in keys if k in logged}


def alarms(run_folder: Path) -> list[tuple[int, str]]:
    """(step, message) of every alarm the run's evaluations raised."""
    out = []
    for path in sorted((run_folder / "evals").glob("step-*/watch.json")):
        record = json.loads(path.read_text())
        out += [(int(record["step"]), m) for m in record.get("alarms", [])]
    return out


def samples_per_step(run_folder: Path) -> int | None:
    """The run's ``batch_size`` from its ``config.yaml`` (None when it cannot be read)."""
    import yaml

    try:
        return int(yaml.safe_load((run_folder / "config.yaml").read_text())["batch_size"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def training_charts(log_path: Path, label: str = "") -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """``[(group, svg)]`` for the run whose log is ``log_path``, and what they were drawn from (steps, alarms, samples a step)."""
    recs = read_train_log(log_path)
    run_folder = log_path.parent
    logged = {k for rec in recs for k in rec}
    held_out = held_out_keys(run_folder, logged)
    series: dict[str, dict[str, list[tuple[float, float]]]] = {g: {} for g in GROUPS}
    for rec in recs:
        for key, value in rec.items():
            group, name = group_of(key, held_out), key.removeprefix("eval/")
            if group and (name in series[group] or len(series[group]) < MAX_SERIES):
                series[group].setdefault(name, []).append((rec["step"], value))
    fired = alarms(run_folder)
    per_step = samples_per_step(run_folder)
    x_label = f"step ({per_step} samples a step)" if per_step else "step"
    by_step: dict[int, list[str]] = {}
    for step, message in fired:
        by_step.setdefault(step, []).append(message)
    markers = [(float(step), "; ".join(messages)) for step, messages in by_step.items()]  # one line a step
    suffix = f" ({label})" if label else ""
    off_scale = {k: v for k, v in series["held-out"].items() if any(not -0.05 <= y <= 1.05 for _, y in v)}  # 1-5 quality...
    series["held-out (raw scale)"] = off_scale
    series["held-out"] = {k: v for k, v in series["held-out"].items() if k not in off_scale}
    charts = [(g, line_chart(s, title=f"{g}{suffix}", x_label=x_label, markers=markers)) for g, s in series.items() if s]
    info = {"steps": len(recs), "alarms": fired, "samples_per_step": per_step}
    return [(g, svg) for g, svg in charts if svg], info
