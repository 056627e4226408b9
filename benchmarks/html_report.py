"""The HTML leaderboard: one self-contained page (inline CSS and SVG, images as data URIs, no scripts, no URLs),
and `flowopd publish`'s static site (index, one page per model, results.json, model-index YAML).

Every string that comes from a run, a prompt or a baselines file goes through :func:`esc`; a Content-Security-Policy
that allows no scripts and no fetches backs that up.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowopd.benchmarks.charts import radar_chart
from flowopd.benchmarks.report import (
    MAIN_MINI,
    MAIN_REAL,
    Cell,
    Column,
    Entry,
    Leaderboard,
    Run,
    Table,
    cell_text,
    legend,
    missing_text,
    provenance_lines,
    skipped_groups,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
THUMB_MAX = 256  # larger images are downscaled (JPEG) before embedding
PIXEL_MAX = 96  # images this small are shown enlarged with hard pixel edges
GALLERY_PROMPTS = 6

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1b1f24;background:#fff}
header{background:#0d1b2a;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px}
header nav a{color:#9ecbff;margin-right:14px}
header .sub{color:#c9d1d9;font-size:13px}
main{max-width:1240px;margin:0 auto;padding:8px 24px 40px}
h2{font-size:18px;margin:30px 0 6px;padding-bottom:4px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:18px 0 6px}
p.note,p.legend{color:#57606a;margin:4px 0 8px;font-size:13px}
.scroll{overflow-x:auto}
table.lb{border-collapse:collapse;margin:6px 0 4px;font-variant-numeric:tabular-nums}
table.lb th,table.lb td{border:1px solid #d0d7de;padding:4px 9px;text-align:right;vertical-align:top}
table.lb th{background:#f3f5f8;font-weight:600}
table.lb th:first-child,table.lb td:first-child{text-align:left;white-space:nowrap}
table.lb tr.reported td{background:#fafafa}
table.lb tr.reported td:first-child{font-style:italic}
table.lb td.na{color:#8c959f}
table.lb tr td.best{background:#e1ecff}
table.lb td.best .v{color:#0b4fd6;font-weight:700}
table.lb tr td.second{background:#e2f5e7}
table.lb td.second .v{color:#137b35;font-weight:700}
table.lb td.teacher .v{text-decoration:underline;font-weight:700}
table.lb tr td.up{background:#e2f5e7}
table.lb td.up .v{color:#137b35;font-weight:700}
table.lb tr td.down{background:#fde8e8}
table.lb td.down .v{color:#b42318;font-weight:700}
.ci,.n{display:block;color:#57606a;font-size:11px;line-height:1.2}
.mark{color:#8250df;font-size:11px;margin-left:2px}
.key{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
svg.chart{background:#fff;border:1px solid #eaecef;border-radius:4px}
.gal-row{border-top:1px solid #eaecef;padding:8px 0}
.gal-row .prompt{margin-bottom:6px}
.gal-row .prompt q{font-weight:600}
.tag{display:inline-block;background:#eef1f5;border-radius:3px;padding:0 6px;font-size:12px;color:#3b4450;margin-right:6px}
.figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:170px}
figure img{display:block;width:160px;height:auto;border:1px solid #d0d7de;background:#f6f8fa}
figure img.px{image-rendering:crisp-edges;image-rendering:pixelated;width:128px;height:128px}
figure .missing{width:128px;height:128px;border:1px dashed #d0d7de;color:#8c959f;display:flex;align-items:center;justify-content:center;font-size:12px}
figcaption{font-size:11px;color:#3b4450;margin-top:3px;word-wrap:break-word}
figcaption b{font-size:12px;color:#1b1f24}
ul.prov{padding-left:18px;margin:4px 0}
ul.prov li{margin:2px 0;word-break:break-word}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;background:#f3f5f8;padding:0 3px;border-radius:3px}
footer{color:#8c959f;font-size:12px;text-align:center;padding:20px}
"""


def esc(x: Any) -> str:
    """HTML-escape any user string (prompts, labels, sources, config values)."""
    return html.escape(str(x), quote=True)


def page(title: str, body: str, nav: str = "", subtitle: str = "") -> str:
    """A whole self-contained page."""
    sub = f'<div class="sub">{esc(subtitle)}</div>' if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{sub}{nav}</header><main>{body}</main>"
        "<footer>made by flowopd report &middot; self-contained: no scripts, no external resources</footer></body></html>\n"
    )


# ------------------------------------------------------------------ tables


def cell_html(lb: Leaderboard, cell: Cell | None, col: Column, rank: int | None, missing: str = "n/a") -> str:
    if cell is None:
        return f'<td class="na">{esc(missing)}</td>'
    t = cell_text(lb, cell, col.digits)
    cls = ["best"] if rank == 1 else ["second"] if rank == 2 else []
    inner = f'<span class="v">{esc(t.value)}</span>'
    inner += f'<span class="ci">{t.ci}</span>' if t.ci else ""
    inner += f'<span class="n">{t.n}</span>' if t.n else ""
    title = ""
    if not cell.measured:
        cls.append("reported")
        inner += f'<span class="mark">{esc(t.mark)}</span>'
        title = f' title="reported: {esc(cell.source)}"'
        if t.teacher:
            cls.append("teacher")
            inner += '<span class="mark">‡</span>'
    klass = f' class="{" ".join(cls)}"' if cls else ""
    return f"<td{klass}{title}>{inner}</td>"


def _label_html(e: Entry, link: str | None) -> str:
    name = esc(e.label)
    if link:
        name = f'<a href="{esc(link)}">{name}</a>'
    return name if e.measured else f'{name} <span class="mark">†</span>'


def table_html(lb: Leaderboard, t: Table, links: dict[str, str] | None = None, only: str | None = None) -> str:
    """A leaderboard table (``only``: just that entry's row, keeping the marks it has in the full table)."""
    head = "".join(f"<th>{esc(c.label)}</th>" for c in t.columns)
    rows = []
    for i, (e, r) in enumerate(t.rows):
        if only is not None and e.slug != only:
            continue
        cls = "" if e.measured else ' class="reported"'
        cells = "".join(cell_html(lb, r.get(c.key), c, t.ranks.get((i, c.key)), missing_text(t.spec, e, c.key)) for c in t.columns)
        rows.append(f"<tr{cls}><td>{_label_html(e, (links or {}).get(e.slug))}</td>{cells}</tr>")
    if not rows:
        return ""
    note = f'<p class="note">{esc(t.spec.note)}</p>' if t.spec.note else ""
    return (
        f'<section id="{esc(t.spec.id)}"><h2>{esc(t.spec.title)}</h2>{note}'
        f'<div class="scroll"><table class="lb"><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>'
    )


def radar_html(lb: Leaderboard) -> str:
    """One radar per main table: the normalised headline metrics of every row that has all four."""
    charts = []
    for t in lb.tables:
        if t.spec not in (MAIN_REAL, MAIN_MINI):
            continue
        cols = [c for c in t.spec.columns]
        series = {}
        for e, r in t.rows:
            vals = [r.get(c.key).value / (c.scale or 1.0) if r.get(c.key) is not None else None for c in cols]
            if all(v is not None for v in vals):
                series[e.label if e.measured else f"{e.label} †"] = vals
        svg = radar_chart([c.label for c in cols], series, title=f"{t.spec.title.split(' (')[0]}: normalised (0-1)")
        if svg:
            charts.append(svg)
    if not charts:
        return ""
    return f'<section id="radar"><h2>Headline metrics, normalised</h2><div class="charts">{"".join(charts)}</div></section>'


def sources_html(lb: Leaderboard) -> str:
    if not lb.sources and not lb.notes:
        return ""
    items = [f"<li>{esc(lb.source_mark(s))} {esc(s)}</li>" for s in lb.sources]
    items += [f"<li>note: {esc(n)}</li>" for n in lb.notes]
    return f'<section id="sources"><h2>Sources</h2><ul class="prov">{"".join(items)}</ul></section>'


def deltas_html(lb: Leaderboard) -> str:
    if lb.deltas is None:
        return ""
    cols: list[str] = []
    for d in lb.deltas.values():
        cols += [c for c in d if c not in cols]
    rows = []
    for name, d in lb.deltas.items():
        cells = []
        for c in cols:
            if c not in d:
                cells.append('<td class="na">n/a</td>')
                continue
            lo, hi = d[c]["ci95"]
            sig = lo > 0 or hi < 0
            cls = ' class="up"' if sig and lo > 0 else ' class="down"' if sig else ""  # green a clear gain, red a clear loss
            cells.append(f'<td{cls}><span class="v">{d[c]["mean"]:+.3f}</span><span class="ci">[{lo:+.3f}, {hi:+.3f}]</span></td>')
        rows.append(f"<tr><td>{esc(name)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    return (
        f'<section id="deltas"><h2>Change against {esc(lb.delta_baseline)}</h2>'
        '<p class="note">Paired by prompt, image index and seed; mean [95% CI]; green a gain and red a loss whose interval excludes 0.</p>'
        f'<div class="scroll"><table class="lb"><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>'
    )


# ------------------------------------------------------------------ images and galleries

_URI_CACHE: dict[str, tuple[str, int, int] | None] = {}


def image_data_uri(path: Path) -> tuple[str, int, int] | None:
    """A data URI of the image, re-encoded (PNG; JPEG when downscaled), with its size; None if it cannot be read."""
    from PIL import Image

    try:
        stat = Path(path).stat()
    except OSError:  # a missing image shows as a placeholder, never a broken <img>
        return None
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"  # a re-written image is re-read, even in one process
    if key in _URI_CACHE:
        return _URI_CACHE[key]
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):  # unreadable (PIL's errors): a placeholder, not a broken <img>
        _URI_CACHE[key] = None
        return None
    buf = io.BytesIO()
    if max(im.size) > THUMB_MAX:
        im.thumbnail((THUMB_MAX, THUMB_MAX))
        im.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    out = (f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", im.width, im.height)
    _URI_CACHE[key] = out
    return out


def _key(rec: dict[str, Any]) -> tuple:
    return (rec.get("prompt"), rec.get("index"), rec.get("seed"))


def _fmt_score(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if abs(v) >= 1 else f"{v:.3f}"


def _scores_text(rec: dict[str, Any]) -> str:
    parts = []
    for name, s in (rec.get("scores") or {}).items():
        if not isinstance(s, dict):
            continue
        parts.append(f"{name} {'failed' if s.get('failed') else _fmt_score(s.get('raw'))}")
    return " · ".join(parts)


def _figure(run: Run, rec: dict[str, Any] | None, caption: str) -> str:
    if rec is None:
        return f'<figure><div class="missing">not in this run</div><figcaption><b>{esc(caption)}</b></figcaption></figure>'
    path = run.image_path(rec["image"]) if isinstance(rec.get("image"), str) else None
    data = image_data_uri(path) if path is not None else None
    scores = _scores_text(rec)
    lines = ([f"<b>{esc(caption)}</b>"] if caption else []) + ([esc(scores)] if scores else [])
    cap = f"<figcaption>{'<br>'.join(lines)}</figcaption>"
    if data is None:
        return f'<figure><div class="missing">image missing</div>{cap}</figure>'
    uri, w, h = data
    cls = ' class="px"' if max(w, h) <= PIXEL_MAX else ""
    alt = esc(f"{caption}: {rec.get('prompt', '')}")
    return f'<figure><img{cls} src="{uri}" width="{w}" height="{h}" alt="{alt}">{cap}</figure>'


def _prompt_html(rec: dict[str, Any]) -> str:
    meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    tags = [rec.get("task")] + [meta.get(k) for k in ("tag", "style", "category")]
    tag_html = "".join(f'<span class="tag">{esc(t)}</span>' for t in dict.fromkeys(t for t in tags if t))
    where = f"image {rec.get('index')}, seed {rec.get('seed')}"
    return f'<div class="prompt">{tag_html}<q>{esc(rec.get("prompt", ""))}</q> <span class="tag">{esc(where)}</span></div>'


def pick_prompts(runs: Sequence[Run], suite: str, k: int) -> list[tuple]:
    """Up to ``k`` (prompt, index, seed) keys, those most runs share first, spread over tasks, one image per prompt."""
    maps = [{_key(r): r for r in run.samples(suite) if isinstance(r, dict) and r.get("prompt") is not None} for run in runs]
    counts: Counter = Counter(key for m in maps for key in m)
    order: dict[tuple, str] = {}
    for m in maps:
        for key, rec in m.items():
            order.setdefault(key, str(rec.get("task") or ""))
    ranked = sorted(order, key=lambda key: -counts[key])  # stable: first appearance breaks ties
    by_task: dict[str, list[tuple]] = {}
    for key in ranked:
        by_task.setdefault(order[key], []).append(key)
    chosen: list[tuple] = []
    prompts: set[str] = set()
    while len(chosen) < k and any(by_task.values()):
        for task in list(by_task):
            while by_task[task]:
                key = by_task[task].pop(0)
                if key[0] not in prompts:
                    chosen.append(key)
                    prompts.add(key[0])
                    break
            if len(chosen) >= k:
                break
        by_task = {t: v for t, v in by_task.items() if v}
    return chosen


def suites_with_samples(runs: Sequence[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for s in (run.summary.get("suites") or {}).keys():
            if s not in names and run.samples(s):
                names.append(s)
    return names


def gallery_html(runs: Sequence[Run], per_suite: int = GALLERY_PROMPTS, caption_model: bool = True) -> str:
    """Per suite, a handful of prompts; per prompt, the same image (index and seed) from every run, side by side."""
    sections = []
    for suite in suites_with_samples(runs):
        having = [r for r in runs if r.samples(suite)]
        rows = []
        for key in pick_prompts(having, suite, per_suite):
            recs = [next((x for x in r.samples(suite) if _key(x) == key), None) for r in having]
            example = next(x for x in recs if x is not None)
            figs = "".join(_figure(r, x, r.label if caption_model else "") for r, x in zip(having, recs))
            rows.append(f'<div class="gal-row">{_prompt_html(example)}<div class="figs">{figs}</div></div>')
        if rows:
            sections.append(f"<h3>{esc(suite)}</h3>{''.join(rows)}")
    if not sections:
        return ""
    return (
        '<section id="galleries"><h2>Samples</h2>'
        '<p class="note">The same prompt, image index and seed for every model; each caption lists every reward that scored the image.</p>'
        + "".join(sections)
        + "</section>"
    )


# ------------------------------------------------------------------ training curves


def curves_html(run: Run, heading: str = "h3") -> str:
    """The curves of the run that trained this model (its summary names the trainer's log): reward, loss, KL, clip
    fraction, held-out metrics and image statistics of its evaluations, alarms marked (:mod:`flowopd.benchmarks.report.curves`)."""
    from flowopd.benchmarks.report.curves import train_log_path, training_charts

    path = train_log_path(run)
    if path is None:
        return ""
    title = f"<{heading}>Training curves: {esc(run.label)}</{heading}>"
    if not path.is_file():
        return f'{title}<p class="note">train log {esc(path)} not found</p>'
    charts, info = training_charts(path, run.label)
    if not charts:
        return f'{title}<p class="note">no reward, loss or KL values in {esc(path)}</p>'
    alarms = "".join(f"<li>step {step}: {esc(message)}</li>" for step, message in info["alarms"])
    alarms = f'<p class="note">alarms (dashed red on the charts):</p><ul class="prov">{alarms}</ul>' if alarms else ""
    note = f'<p class="note">from <code>{esc(path)}</code>, {info["steps"]} steps</p>'
    return f'{title}{note}<div class="charts">{"".join(svg for _, svg in charts)}</div>{alarms}'


# ------------------------------------------------------------------ provenance


def skipped_html(runs: Sequence[Run]) -> str:
    items = [
        f"<li><span class='key'>{esc(', '.join(suites))}</span> (<b>{esc(', '.join(models))}</b>): {esc(why)}</li>"
        for suites, models, why in skipped_groups(runs)
    ]
    return f'<section id="skipped"><h2>Skipped suites</h2><ul class="prov">{"".join(items)}</ul></section>' if items else ""


def provenance_html(runs: Sequence[Run], link: dict[str, str] | None = None) -> str:
    blocks = []
    for r in runs:
        lines = provenance_lines(r)
        name = esc(r.label)
        if link and r.slug in link:
            name = f'<a href="{esc(link[r.slug])}">{name}</a>'
        items = "".join(f"<li>{esc(x)}</li>" for x in lines[1:])
        blocks.append(f"<li><b>{name}</b> <code>{esc(r.folder)}</code>: {esc(lines[0])}<ul class='prov'>{items}</ul></li>")
    return f'<section id="provenance"><h2>Provenance</h2><ul class="prov">{"".join(blocks)}</ul></section>' if blocks else ""


def metrics_listing_html(run: Run) -> str:
    rows = []
    for key, m in run.metrics.items():
        ci = m.get("ci95") or [math.nan, math.nan]
        rows.append(
            f'<tr><td class="key">{esc(key)}</td><td>{m["mean"]:.4f}</td><td>[{float(ci[0]):.4f}, {float(ci[1]):.4f}]</td><td>{esc(m.get("n", ""))}</td></tr>'
        )
    return (
        '<section id="all-metrics"><h2>All metrics</h2><div class="scroll"><table class="lb"><thead><tr><th>metric</th><th>mean</th>'
        f"<th>95% CI</th><th>n</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


# ------------------------------------------------------------------ pages


def render_report(lb: Leaderboard, links: dict[str, str] | None = None, nav: str = "", per_suite: int = GALLERY_PROMPTS) -> str:
    """The whole leaderboard as one self-contained HTML page."""
    runs = lb.runs
    n_rep = len(lb.entries) - len(runs)
    parts = [f'<p class="legend">{esc(legend(lb)).replace("**best**", "<b>best</b>").replace("_second best_", "<i>second best</i>")}</p>']
    parts += [table_html(lb, t, links) for t in lb.tables]
    parts.append(sources_html(lb))
    parts.append(radar_html(lb))
    parts.append(deltas_html(lb))
    parts.append(gallery_html(runs, per_suite))
    curves = "".join(curves_html(r) for r in runs)
    if curves:
        parts.append(f'<section id="curves"><h2>Training curves</h2>{curves}</section>')
    parts.append(skipped_html(runs))
    parts.append(provenance_html(runs, links))
    subtitle = f"{len(runs)} measured run(s)" + (f", {n_rep} reported model(s)" if n_rep else "")
    return page("flowopd leaderboard", "".join(p for p in parts if p), nav=nav, subtitle=subtitle)


def render_model_page(lb: Leaderboard, e: Entry, nav: str = "", per_suite: int = 8) -> str:
    """One measured model: its rows of every table (marks as on the leaderboard), all metrics, images, curves, provenance."""
    assert e.run is not None
    run = e.run
    parts = [f'<p class="legend">{esc(legend(lb)).replace("**best**", "<b>best</b>").replace("_second best_", "<i>second best</i>")}</p>']
    parts += [table_html(lb, t, only=e.slug) for t in lb.tables]
    parts.append(metrics_listing_html(run))
    parts.append(gallery_html([run], per_suite, caption_model=False).replace("for every model", "of this model"))
    curves = curves_html(run)
    if curves:
        parts.append(f'<section id="curves"><h2>Training curves</h2>{curves}</section>')
    parts.append(skipped_html([run]))
    parts.append(provenance_html([run]))
    return page(e.label, "".join(p for p in parts if p), nav=nav, subtitle=f"{run.model.get('spec') or ''} ({run.world} world)")
