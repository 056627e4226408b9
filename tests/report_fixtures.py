"""Synthetic evaluation run folders in the layout `flowopd eval` writes (summary.json, <suite>/samples.jsonl, images/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

XSS = "<script>document.title='pwned'</script> a red <b>cube</b> & \"quotes\""

MINI_JOBS = [
    ("compose", "a red circle", {"tag": "single_object"}),
    ("compose", "two blue squares", {"tag": "counting"}),
    ("compose", "a green triangle left of a red circle", {"tag": "position"}),
    ("text", 'the text "42"', {"text": "42"}),
    ("preference", "a calm blue scene", {}),
    ("quality", XSS, {}),
]
MINI_REWARDS = {
    "compose": ["mini_geneval", "mini_preference", "mini_quality"],
    "text": ["mini_ocr", "mini_preference", "mini_quality"],
    "preference": ["mini_preference", "mini_quality"],
    "quality": ["mini_quality", "mini_geneval", "mini_preference"],
}
COLOURS = [(220, 40, 40), (40, 80, 220), (40, 170, 70), (240, 160, 20), (150, 60, 200), (20, 160, 170)]


def tiny_png(path: Path, k: int, size: int = 32, shift: int = 0) -> None:
    """A small picture: a coloured disc and bar on a light background (different per k and shift)."""
    img = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(img)
    c = COLOURS[(k + shift) % len(COLOURS)]
    s = size
    d.ellipse([s * 0.15, s * 0.15, s * 0.6, s * 0.6], fill=c)
    d.rectangle([s * 0.55, s * 0.6, s * 0.9, s * 0.85], fill=COLOURS[(k + shift + 2) % len(COLOURS)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def metric(mean: float, n: int = 48, half: float | None = None) -> dict[str, Any]:
    h = abs(mean) * 0.03 + 0.01 if half is None else half
    return {"mean": mean, "n": n, "ci95": [mean - h, mean + h]}


def write_run(
    folder: Path,
    *,
    label: str,
    world: str,
    metrics: dict[str, dict[str, Any]],
    samples: dict[str, list[dict[str, Any]]] | None = None,
    skipped: dict[str, str] | None = None,
    train_log: Path | None = None,
    spec: str | None = None,
) -> Path:
    """Write ``folder`` as an evaluation run; ``samples[suite]`` records get their images written beside."""
    folder.mkdir(parents=True, exist_ok=True)
    suites: dict[str, Any] = {}
    for key in metrics:
        suite = key.split("/")[0]
        s = suites.setdefault(
            suite,
            {
                "n_images": 0,
                "headline": {},
                "metrics": {},
                "sampling": {"steps": 8, "cfg": 1.5, "shift": 3.0, "resolution": 32},
                "notes": [],
            },
        )
        s["metrics"][key.split("/", 1)[1]] = metrics[key]
    for suite, recs in (samples or {}).items():
        suites.setdefault(suite, {"n_images": 0, "headline": {}, "metrics": {}, "sampling": {}, "notes": []})["n_images"] = len(recs)
        (folder / suite).mkdir(parents=True, exist_ok=True)
        with open(folder / suite / "samples.jsonl", "w") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
    summary = {
        "kind": "flowopd-eval",
        "model": {
            "spec": spec or label,
            "label": label,
            "world": world,
            "digest": "d1g3st",
            "train_log": str(train_log) if train_log else None,
        },
        "suites": suites,
        "skipped": skipped or {},
        "metrics": metrics,
        "run": {
            "config": {"model": spec or label, "suite": "all", "seed": 0},
            "seed": 0,
            "versions": {"flowopd": "0.1.0", "torch": "2.13.0"},
            "git": "abc1234",
            "python": "3.11.2",
            "platform": "Linux-test",
        },
        "cache": {"hits": 3, "misses": 5},
        "seconds": 12.5,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder


def mini_samples(folder: Path, shift: int, quality: float) -> list[dict[str, Any]]:
    recs = []
    for k, (task, prompt, meta) in enumerate(MINI_JOBS):
        rel = f"images/mini-{k:03d}.png"
        tiny_png(folder / rel, k, 32, shift)
        scores = {}
        for j, r in enumerate(MINI_REWARDS[task]):
            raw = 1.0 + 4 * quality if r == "mini_quality" else round((quality + 0.1 * j) % 1.0, 3)
            details = {"correct": raw > 0.5} if r == "mini_geneval" else {}
            scores[r] = {"raw": raw, "normalized": raw, "details": details}
        recs.append(
            {
                "suite": "mini",
                "task": task,
                "prompt": prompt,
                "metadata": meta,
                "index": 0,
                "seed": 1000 + k,
                "image": rel,
                "scores": scores,
            }
        )
    return recs


def make_mini_run(root: Path, name: str, label: str, skill: float, shift: int = 0, train_log: bool = True) -> Path:
    """A mini-world run whose metrics grow with ``skill`` (0-1), with a trainer log when ``train_log``."""
    folder = root / name
    m = {
        "mini/compose/geneval_overall": metric(0.3 + 0.5 * skill),
        "mini/text/mini_ocr": metric(0.2 + 0.6 * skill),
        "mini/text/exact_match": metric(0.1 + 0.5 * skill),
        "mini/preference/mini_preference": metric(0.4 + 0.4 * skill),
        "mini/quality/mini_quality": metric(2.5 + 2.0 * skill),
    }
    for i, tag in enumerate(("single_object", "two_object", "counting", "colors", "position", "color_attr")):
        m[f"mini/compose/geneval_{tag}"] = metric(min(1.0, 0.2 + 0.1 * i + 0.4 * skill), n=8)
    for task, rewards in MINI_REWARDS.items():
        for j, r in enumerate(rewards[1:]):
            m[f"mini/{task}/{r}"] = metric(3.0 - skill if r == "mini_quality" else 0.5 + 0.05 * j - 0.1 * skill)
    log = None
    if train_log:
        log = root / f"{name}-train" / "log.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            for step in range(1, 13):
                rec = {"step": step, "loss": 0.05 / step, "kl_rollout": 0.08 + 0.01 * step, "kl/compose": 0.1 + 0.005 * step, "mar": 0.01}
                rec.update({"reward": 0.4 + skill * step / 24, "reward/mini_quality": 0.5 + step / 50, "time_step": 6.1, "note": "text"})
                f.write(json.dumps(rec) + "\n")
    samples = {"mini": mini_samples(folder, shift, skill)}
    skipped = {"geneval": "needs a model for real prompts (--model sd3:<hub id or folder>)"}
    return write_run(folder, label=label, world="mini", metrics=m, samples=samples, train_log=log, skipped=skipped)


def make_real_run(root: Path, name: str, label: str, values: dict[str, float], n: int = 200, skipped: dict[str, str] | None = None) -> Path:
    """A real-world run with the given metric means (keys like geneval/overall) and a few 64 px images for geneval and ocr."""
    folder = root / name
    metrics = {k: metric(v, n) for k, v in values.items()}
    samples: dict[str, list[dict[str, Any]]] = {}
    for suite in sorted({k.split("/")[0] for k in values} & {"geneval", "ocr"}):
        recs = []
        for k in range(3):
            rel = f"images/{suite}-{k:03d}.png"
            tiny_png(folder / rel, k, 64, len(label))
            prompt = XSS if k == 2 else f"a photo of {k + 1} {suite} things"
            reward = "geneval" if suite == "geneval" else "ocr"
            recs.append(
                {
                    "suite": suite,
                    "task": suite,
                    "prompt": prompt,
                    "metadata": {"tag": "counting"} if suite == "geneval" else {},
                    "index": 0,
                    "seed": 7 + k,
                    "image": rel,
                    "scores": {reward: {"raw": 0.5 + 0.1 * k, "normalized": 0.5, "details": {}}},
                }
            )
        samples[suite] = recs
    write_run(folder, label=label, world="real", metrics=metrics, samples=samples, skipped=skipped, spec=f"sd3:{label}")
    return folder
