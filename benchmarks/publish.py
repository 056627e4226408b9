"""Writing reports to disk: the static leaderboard site (``flowopd publish``) and an eval run folder's ``report.md`` and
``report.html`` (``flowopd eval``), each written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from flowopd.benchmarks.html_report import esc, render_model_page, render_report
from flowopd.benchmarks.report import Leaderboard, model_card, model_index_yaml, to_json


def publish(lb: Leaderboard, out: str | Path) -> Path:
    """Write the static site into ``out`` atomically: index.html, models/<slug>.html, results.json, model-index/<slug>.yaml,
    model-cards/<slug>/README.md (Hugging Face model cards) and README.md (the first model's card)."""
    from flowopd.runinfo import atomic_dir, write_json_atomic

    out = Path(out)
    measured = [e for e in lb.entries if e.measured]
    links = {e.slug: f"models/{e.slug}.html" for e in measured}
    with atomic_dir(out, marker="results.json") as tmp:
        nav = '<nav><a href="results.json">results.json</a>' + "".join(
            f'<a href="model-index/{esc(e.slug)}.yaml">model-index: {esc(e.label)}</a>' for e in measured
        )
        nav += "</nav>"
        (tmp / "index.html").write_text(render_report(lb, links, nav=nav), encoding="utf-8")
        (tmp / "models").mkdir()
        (tmp / "model-index").mkdir()
        for e in measured:
            model_nav = (
                f'<nav><a href="../index.html">&larr; leaderboard</a><a href="../model-index/{esc(e.slug)}.yaml">model-index YAML</a>'
                '<a href="../results.json">results.json</a></nav>'
            )
            (tmp / "models" / f"{e.slug}.html").write_text(render_model_page(lb, e, nav=model_nav), encoding="utf-8")
            (tmp / "model-index" / f"{e.slug}.yaml").write_text(model_index_yaml([e]), encoding="utf-8")
            (tmp / "model-cards" / e.slug).mkdir(parents=True)
            (tmp / "model-cards" / e.slug / "README.md").write_text(model_card(lb, e), encoding="utf-8")
        if measured:  # the site's own card: the first model's (the one being published)
            (tmp / "README.md").write_text(model_card(lb, measured[0]), encoding="utf-8")
        write_json_atomic(tmp / "results.json", to_json(lb))
    return out


def write_run_report(folder: str | Path, baselines: str | Path | None = None) -> list[Path]:
    """Write ``report.md`` and ``report.html`` (self-contained) into an evaluation run folder; returns their paths."""
    from flowopd.benchmarks.report import build_report, to_markdown
    from flowopd.runinfo import atomic_file

    folder = Path(folder)
    lb = build_report([folder], baselines)
    written = []
    for name, text in (("report.md", to_markdown(lb, folder / "report.md")), ("report.html", render_report(lb))):
        with atomic_file(folder / name, "w") as f:
            f.write(text)
        written.append(folder / name)
    return written
