"""Leaderboard reports from evaluation run folders: the paper's tables with 95% CIs and sample counts, published
baselines beside the measured runs, as Markdown, JSON and Hugging Face ``model-index`` YAML (the HTML page: html_report.py;
the site and an eval run folder's ``report.md`` + ``report.html``: publish.py).

A run folder is what `flowopd eval` writes: ``summary.json`` (metrics keyed ``<suite>/<metric>`` with mean, n
and ci95) and ``<suite>/samples.jsonl`` (one record per image). A baselines file (CSV or JSON) holds published
numbers, ``model, metric, value, source`` (optional ``teacher``), shown as *reported*, never as measured.

Modules, bottom to top: ``tables``, ``runs``, ``baselines``, ``leaderboard``, ``paired``, ``markdown``,
``exports``; this package re-exports their names.
"""

from flowopd.benchmarks.report.baselines import (  # noqa: F401
    Baseline,
    load_baselines,
    metric_key,
)
from flowopd.benchmarks.report.exports import (  # noqa: F401
    DATASETS,
    model_card,
    model_index_entry,
    model_index_yaml,
    to_json,
)
from flowopd.benchmarks.report.leaderboard import (  # noqa: F401
    Cell,
    CellText,
    Entry,
    Leaderboard,
    Table,
    avg_cell,
    baseline_entries,
    build_leaderboard,
    build_table,
    cell_text,
    fmt_value,
    mini_rewards_spec,
    missing_text,
    normalised_mean,
    rank_cells,
    run_entry,
    table_specs,
)
from flowopd.benchmarks.report.markdown import (  # noqa: F401
    deltas_markdown,
    legend,
    provenance,
    provenance_lines,
    row_label,
    skipped_groups,
    table_markdown,
    to_markdown,
)
from flowopd.benchmarks.report.paired import (  # noqa: F401
    PAIRED_AVG,
    add_deltas,
    build_report,
    headline_values,
    load_samples,
    paired_avg,
    paired_deltas,
)
from flowopd.benchmarks.report.runs import (  # noqa: F401
    Run,
    load_run,
    load_summary,
    name_runs,
    slugify,
)
from flowopd.benchmarks.report.tables import (  # noqa: F401
    AVG,
    BASELINE_FIELDS,
    DPG_L1,
    GENEVAL2,
    GENEVAL2_ATOMS,
    GENEVAL2_SKILLS,
    GENEVAL_MINI,
    GENEVAL_TAGS,
    HEADLINE_REWARD,
    HPSV2,
    KEY_LABELS,
    MAIN_MINI,
    MAIN_REAL,
    METRIC_LABELS,
    MINI_TASKS,
    ONEIG,
    QUALITY,
    SHIPPED_BASELINES,
    T2I,
    T2I_CATEGORIES,
    TAG_LABELS,
    Column,
    TableSpec,
    dpg_runtimes,
    dpg_spec,
    geneval_spec,
    t2i_spec,
)
