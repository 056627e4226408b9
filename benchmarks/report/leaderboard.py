"""The leaderboard: cells, entries (measured runs and reported baselines), tables, Avg and the ranks; and
the one cell formatter the Markdown and HTML renderers share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from flowopd.benchmarks.report.baselines import Baseline
from flowopd.benchmarks.report.runs import Run, name_runs, slugify
from flowopd.benchmarks.report.tables import (
    AVG,
    GENEVAL2,
    GENEVAL2_ATOMS,
    GENEVAL_MINI,
    HEADLINE_REWARD,
    HPSV2,
    MAIN_MINI,
    MAIN_REAL,
    MINI_TASKS,
    ONEIG,
    QUALITY,
    Column,
    TableSpec,
    dpg_runtimes,
    dpg_spec,
    geneval_spec,
    t2i_spec,
)
from flowopd.benchmarks.stats import Z95, standard_error

# ------------------------------------------------------------------ the leaderboard


@dataclasses.dataclass
class Cell:
    """One value: measured (mean, 95% CI, n) or reported (source; ``text`` as printed there)."""

    value: float
    ci95: tuple[float, float] | None = None
    n: int | None = None
    source: str | None = None  # None: measured
    teacher: bool = False
    text: str | None = None
    se: float | None = None  # the standard error behind ci95 (which may be clipped to the metric's range)

    @property
    def measured(self) -> bool:
        return self.source is None


def fmt_value(cell: Cell, digits: int) -> str:
    """The number as printed: a reported value as its source printed it."""
    if not cell.measured and cell.text:
        return cell.text
    return f"{cell.value:.{digits}f}" if math.isfinite(cell.value) else "nan"


@dataclasses.dataclass(frozen=True)
class CellText:
    """A cell's parts as text, the one formatting the Markdown and HTML renderers share."""

    value: str  # the number as printed (a reported value as its source printed it)
    ci: str = ""  # a measured cell's "[lo, hi]"
    n: str = ""  # a measured cell's "n=N"
    mark: str = ""  # a reported cell's source mark
    teacher: bool = False  # a reported teacher row (marked ‡)


def cell_text(lb: Leaderboard, cell: Cell, digits: int) -> CellText:
    """The parts of ``cell`` at ``digits`` decimals."""
    value = fmt_value(cell, digits)
    if not cell.measured:
        return CellText(value, mark=lb.source_mark(cell.source or ""), teacher=cell.teacher)
    ci = f"[{cell.ci95[0]:.{digits}f}, {cell.ci95[1]:.{digits}f}]" if cell.ci95 else ""
    return CellText(value, ci=ci, n=f"n={int(cell.n)}" if cell.n else "")


@dataclasses.dataclass
class Entry:
    """A leaderboard row: a measured run, or one model's published numbers."""

    label: str
    slug: str
    cells: dict[str, Cell]
    run: Run | None = None
    printed_avg: Baseline | None = None

    @property
    def measured(self) -> bool:
        return self.run is not None

    @property
    def world(self) -> str:
        if self.run is not None:
            return self.run.world
        return "mini" if any(k.startswith("mini/") for k in self.cells) else "real"


@dataclasses.dataclass
class Table:
    spec: TableSpec
    columns: list[Column]
    rows: list[tuple[Entry, dict[str, Cell | None]]]
    ranks: dict[tuple[int, str], int]


@dataclasses.dataclass
class Leaderboard:
    entries: list[Entry]
    tables: list[Table]
    sources: list[str]
    notes: list[str]
    deltas: dict[str, dict[str, dict[str, Any]]] | None = None
    delta_baseline: str | None = None

    @property
    def runs(self) -> list[Run]:
        return [e.run for e in self.entries if e.run is not None]

    def source_mark(self, source: str) -> str:
        return f"†{self.sources.index(source) + 1}" if len(self.sources) > 1 else "†"


def missing_text(spec: TableSpec, e: Entry, key: str) -> str:
    """What an empty cell reads: "skipped" where a measured row's suite does not compute that column, else "n/a"."""
    return "skipped" if e.measured and key in spec.skipped else "n/a"


def run_entry(run: Run) -> Entry:
    cells = {}
    for key, m in run.metrics.items():
        ci = m.get("ci95")
        ci = (
            (float(ci[0]), float(ci[1]))
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci)
            else None  # none, or n < 2
        )
        cells[key] = Cell(float(m["mean"]), ci, m.get("n"), se=standard_error(m) if ci else None)
    return Entry(run.label, run.slug, cells, run=run)


def baseline_entries(rows: Sequence[Baseline], taken: set[str]) -> list[Entry]:
    """One entry per model, in order of first appearance."""
    out: dict[str, Entry] = {}
    for b in rows:
        if b.model not in out:
            slug, k = f"reported-{slugify(b.model)}", 2
            while slug in taken:
                slug, k = f"reported-{slugify(b.model)}-{k}", k + 1
            taken.add(slug)
            out[b.model] = Entry(b.model, slug, {})
        if b.key == "avg":
            out[b.model].printed_avg = b
        else:
            out[b.model].cells[b.key] = Cell(b.value, source=b.source, teacher=b.teacher, text=b.text)
    return list(out.values())


def normalised_mean(values: Sequence[float], scales: Sequence[float]) -> float:
    """The paper's Avg: the mean of the metrics each divided by its scale (0-1)."""
    return sum(v / s for v, s in zip(values, scales)) / len(values)


def avg_cell(cells: Sequence[Cell | None], scales: Sequence[float]) -> Cell | None:
    """Avg of a row, or None unless every metric is present; measured rows get an interval (metrics taken as independent)."""
    if any(c is None or not math.isfinite(c.value) for c in cells):
        return None
    cells = [c for c in cells if c is not None]
    value = normalised_mean([c.value for c in cells], scales)
    if all(c.measured for c in cells):
        if all(c.ci95 for c in cells):
            ses = [c.se if c.se is not None else (c.ci95[1] - c.ci95[0]) / (2 * Z95) for c in cells]
            se = math.sqrt(sum((e / s) ** 2 for e, s in zip(ses, scales))) / len(cells)
            return Cell(value, (value - Z95 * se, value + Z95 * se))
        return Cell(value)
    sources = list(dict.fromkeys(c.source for c in cells if c.source))
    return Cell(value, source=sources[0] if len(sources) == 1 else "; ".join(sources))


def rank_cells(cells: Sequence[Cell | None], digits: int) -> list[int | None]:
    """1 (best) / 2 (second best) per cell, higher is better, compared as printed; teacher scores and lone values are not ranked."""
    vals = [round(c.value, digits) if c is not None and not c.teacher and math.isfinite(c.value) else None for c in cells]
    present = [v for v in vals if v is not None]
    if len(present) < 2:
        return [None] * len(cells)
    distinct = sorted(set(present), reverse=True)
    if len(distinct) == 1:  # all equal: nothing stands out
        return [None] * len(cells)
    best = distinct[0]
    second = distinct[1] if len(distinct) > 1 else None
    return [1 if v is not None and v == best else 2 if v is not None and v == second else None for v in vals]


def mini_rewards_spec(entries: Sequence[Entry]) -> TableSpec:
    """Every mini reward on every task, from the keys the runs have."""
    found: set[tuple[str, str]] = set()
    for e in entries:
        for key in e.cells:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "mini" and parts[2].startswith("mini_"):
                found.add((parts[1], parts[2]))
    order = {t: i for i, t in enumerate(MINI_TASKS)}
    cols = []
    for task, reward in sorted(found, key=lambda tr: (order.get(tr[0], 99), tr[0], HEADLINE_REWARD.get(tr[0]) != tr[1], tr[1])):
        star = "*" if HEADLINE_REWARD.get(task) == reward else ""
        cols.append(Column(f"mini/{task}/{reward}", f"{task}: {reward.removeprefix('mini_')}{star}", 2 if reward == "mini_quality" else 3))
    note = "Every reward on every task's images (* = the task's own reward); a reward hacked in training shows as a gain in its own column and a loss in the others."
    return TableSpec("mini-rewards", "Every mini reward on every task", tuple(cols), note=note)


def table_specs(entries: Sequence[Entry]) -> list[TableSpec]:
    """The tables that apply to these entries, in the order they are shown."""
    keys = {k for e in entries for k in e.cells}
    geneval_prefixes = sorted({k.split("/")[0] for k in keys if k.split("/")[0].startswith("geneval")}, key=lambda p: (p != "geneval", p))
    specs = [
        MAIN_REAL,
        MAIN_MINI,
        *[geneval_spec(p) for p in geneval_prefixes],
        GENEVAL_MINI,
        QUALITY,
        t2i_spec(keys),
        GENEVAL2,
        GENEVAL2_ATOMS,
        *[dpg_spec(rt) for rt in dpg_runtimes(keys)],
        ONEIG,
        HPSV2,
        mini_rewards_spec(entries),
    ]
    return [s for s in specs if any(c.key in keys for c in s.columns) and (not s.require or any(k in keys for k in s.require))]


def build_table(spec: TableSpec, entries: Sequence[Entry]) -> Table | None:
    """A table's rows (entries with any of its metrics), its Avg column, and the best/second marks per column."""
    rows = [(e, {c.key: e.cells.get(c.key) for c in spec.columns}) for e in entries if any(c.key in e.cells for c in spec.columns)]
    if not rows:
        return None
    columns = [c for c in spec.columns if spec.keep_empty or any(r[c.key] is not None for _, r in rows)]
    if spec.avg:
        scales = [c.scale or 1.0 for c in spec.columns]
        for _, r in rows:
            r["avg"] = avg_cell([r[c.key] for c in spec.columns], scales)
        columns.append(AVG)
    ranks: dict[tuple[int, str], int] = {}
    for c in columns:
        for i, rk in enumerate(rank_cells([r[c.key] for _, r in rows], c.digits)):
            if rk:
                ranks[(i, c.key)] = rk
    return Table(spec, columns, rows, ranks)


def build_leaderboard(runs: Sequence[Run], baselines: Sequence[Baseline] = ()) -> Leaderboard:
    """Measured runs first (in the order given), then the published rows; every table that applies."""
    name_runs(runs)
    entries = [run_entry(r) for r in runs]
    entries += baseline_entries(baselines, {r.slug for r in runs})
    tables = [t for t in (build_table(s, entries) for s in table_specs(entries)) if t is not None]
    sources = list(dict.fromkeys(b.source for b in baselines if b.key != "avg"))
    notes = []
    for t in tables:
        if not t.spec.avg:
            continue
        for e, r in t.rows:
            p = e.printed_avg
            if p is not None and r.get("avg") is not None and abs(r["avg"].value - p.value) > 6e-4:
                notes.append(
                    f"{e.label}: {p.source} prints Avg {p.text}, but its four metrics give {r['avg'].value:.4f}; "
                    "the table shows the computed value."
                )
    stated = dict.fromkeys((b.model, b.source, b.protocol) for b in baselines if b.protocol)
    notes += [f"{model} as reported by {source}, sampled with: {protocol}" for model, source, protocol in stated]
    return Leaderboard(entries, tables, sources, notes)
