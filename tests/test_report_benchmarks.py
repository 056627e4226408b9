"""Issue 19 #6: the leaderboard's tables for T2I-CompBench++ per category, GenEval 2 per skill and atom count, DPG-Bench L1
and OneIG-Bench dimensions, beside the published numbers shipped under benchmarks/baselines/."""

import pytest
import yaml
from report_fixtures import make_real_run

from flowopd.benchmarks.html_report import table_html
from flowopd.benchmarks.report import (
    GENEVAL2_SKILLS,
    ONEIG,
    SHIPPED_BASELINES,
    T2I_CATEGORIES,
    build_leaderboard,
    build_report,
    load_baselines,
    model_index_yaml,
    to_json,
    to_markdown,
)

ONEIG_CSV = SHIPPED_BASELINES / "oneig-bench.csv"
PAPER = SHIPPED_BASELINES / "flow-opd-paper.csv"


def _table(lb, table_id):
    (t,) = [t for t in lb.tables if t.spec.id == table_id]
    return t


def _row(t, label):
    return next(r for e, r in t.rows if e.label == label)


def _md_line(md, label):
    return next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))


def test_t2i_categories_and_geneval2_skills_match_the_suites():
    from flowopd.benchmarks.suites import T2I_METRIC_MODELS
    from flowopd.reward_models.geneval2 import SKILLS

    assert sorted(c for c, _ in T2I_CATEGORIES) == sorted(T2I_METRIC_MODELS)
    assert tuple(s for s, _ in GENEVAL2_SKILLS) == SKILLS


def test_t2i_per_category_runtimes_named_apart_and_the_mean_only_when_written(tmp_path):
    official = {f"t2i-compbench/{c}": 0.5 for c in ("color", "shape", "texture")} | {"t2i-compbench/non_spatial": 0.31}
    runtime = {f"t2i-compbench/{c}@np-rules": 0.6 for c in ("color", "shape", "texture")} | {"t2i-compbench/non_spatial": 0.30}
    a = make_real_run(tmp_path, "a", "blip-run", official)
    b = make_real_run(tmp_path, "b", "rules-run", runtime)
    lb = build_report([a, b], PAPER)
    t = _table(lb, "t2i-compbench")
    labels = [c.label for c in t.columns]
    assert labels[:2] == ["Color", "Color @np-rules"] and "Texture @np-rules" in labels and "Mean (8)" not in labels
    assert labels.index("Shape @np-rules") == labels.index("Shape") + 1  # each runtime right after its official column
    assert "not the official T2I-CompBench++" in t.spec.note
    r = _row(t, "rules-run")
    assert r["t2i-compbench/color"] is None and r["t2i-compbench/color@np-rules"].value == 0.6  # never shown as the official number
    assert _row(t, "SD-3.5-M")["t2i-compbench/color"].value == 0.7994  # the paper's Table 3 row in the same table
    md = to_markdown(lb)
    assert "| Color @np-rules |" in md and "n/a" in _md_line(md, "rules-run")
    every = {f"t2i-compbench/{c}": 0.5 for c, _ in T2I_CATEGORIES} | {"t2i-compbench/mean": 0.5}
    full = make_real_run(tmp_path, "c", "full-run", every)
    t = _table(build_report([full, a]), "t2i-compbench")
    assert [c.label for c in t.columns][-1] == "Mean (8)"
    assert _row(t, "full-run")["t2i-compbench/mean"].value == 0.5 and _row(t, "blip-run")["t2i-compbench/mean"] is None


def test_geneval2_per_skill_and_per_atom_count(tmp_path):
    values = {"geneval2/soft_tifa_am": 81.234, "geneval2/soft_tifa_gm": 55.5}
    values |= {f"geneval2/skill/{s}": 70.0 + i for i, (s, _) in enumerate(GENEVAL2_SKILLS)}
    values |= {f"geneval2/atoms/{k}": 90.0 - 5 * k for k in range(3, 11)}
    lb = build_report([make_real_run(tmp_path, "g", "sd-g2", values)])
    t = _table(lb, "geneval2")
    assert [c.label for c in t.columns] == [
        "Soft-TIFA AM",
        "Soft-TIFA GM",
        "Object (AM)",
        "Attribute (AM)",
        "Count (AM)",
        "Position (AM)",
        "Verb (AM)",
    ]
    atoms = _table(lb, "geneval2-atoms")
    assert [c.label for c in atoms.columns] == [f"{k} atoms" for k in range(3, 11)]
    assert _row(atoms, "sd-g2")["geneval2/atoms/10"].value == pytest.approx(40.0)
    md = to_markdown(lb)
    assert "## GenEval 2 (Soft-TIFA x 100)" in md and "| sd-g2 | 81.23 [" in md
    assert "## GenEval 2 per atom count (Soft-TIFA GM x 100)" in md
    doc = yaml.safe_load(model_index_yaml(lb.entries))
    assert "GenEval 2 (Soft-TIFA)" in {r["dataset"]["name"] for r in doc["model-index"][0]["results"]}


def test_geneval2_atoms_table_needs_its_keys(tmp_path):
    lb = build_report([make_real_run(tmp_path, "g", "am-only", {"geneval2/soft_tifa_am": 80.0})])
    ids = [t.spec.id for t in lb.tables]
    assert "geneval2" in ids and "geneval2-atoms" not in ids
    assert [c.label for c in _table(lb, "geneval2").columns] == ["Soft-TIFA AM"]  # empty columns left out


def test_dpg_bench_l1_one_table_per_judge(tmp_path):
    served = {f"dpg-bench/L1/{c}@served-vlm": 80.0 for c in ("global", "entity", "attribute", "relation", "other")}
    served |= {"dpg-bench/overall@served-vlm": 77.7, "dpg-bench/L2/entity-whole@served-vlm": 85.0}
    run = make_real_run(tmp_path, "d", "sd-dpg", served)
    csv = tmp_path / "dpg.csv"  # a made-up published row in the official metric: it must land in its own table
    csv.write_text("model,metric,value,source\nSome model,dpg-bench/overall,70.00,made-up test source\n")
    lb = build_report([run], csv)
    t = _table(lb, "dpg-bench@served-vlm")
    assert [c.label for c in t.columns] == ["Global", "Entity", "Attribute", "Relation", "Other", "Overall"]
    assert "not the official" in t.spec.title and "served-vlm" in t.spec.note
    assert [e.label for e, _ in t.rows] == ["sd-dpg"]  # the official published number is not beside the served judge's
    official = _table(lb, "dpg-bench")
    assert [e.label for e, _ in official.rows] == ["Some model"] and [c.label for c in official.columns] == ["Overall"]
    md = to_markdown(lb)
    assert "## DPG-Bench, judged by served-vlm: not the official number" in md and "| sd-dpg | 80.00 [" in md


def test_oneig_dimensions_skipped_and_the_published_rows(tmp_path):
    run = make_real_run(tmp_path, "o", "sd-oneig", {"oneig/alignment": 0.812, "oneig/text": 0.4, "oneig/alignment/anime": 0.8})
    lb = build_report([run], ONEIG_CSV)
    t = _table(lb, "oneig")
    assert [c.label for c in t.columns] == ["Alignment", "Text", "Reasoning", "Style", "Diversity"]
    md = to_markdown(lb)
    mine = _md_line(md, "sd-oneig")
    assert mine.count("skipped") == 3 and "n/a" not in mine and "_0.812_" not in mine
    gpt = _md_line(md, "GPT-4o †")
    assert "_0.851_ †" in gpt and "**0.462** †" in gpt  # Imagen4 0.857 best alignment; the measured 0.812 is ranked with them
    assert "skipped" not in _md_line(md, "Stable Diffusion 3.5 Large †")
    html = table_html(lb, t)
    assert html.count('<td class="na">skipped</td>') == 3
    doc = to_json(lb)
    oneig = next(x for x in doc["tables"] if x["id"] == "oneig")
    mine_json = next(r for r in oneig["rows"] if r["label"] == "sd-oneig")
    assert mine_json["cells"]["oneig/reasoning"] is None and mine_json["cells"]["oneig/alignment"]["measured"]


def test_oneig_table_alone_keeps_its_shape(tmp_path):
    lb = build_report([make_real_run(tmp_path, "o", "only", {"oneig/text": 0.5})])
    t = _table(lb, "oneig")
    assert len(t.columns) == len(ONEIG.columns)
    assert _md_line(to_markdown(lb), "only").count("skipped") == 3


def test_oneig_baselines_csv_loads_with_a_source_on_every_row():
    rows = load_baselines("oneig-bench")  # the shipped name
    assert len(rows) == 22 * 5 and all(b.source.strip() for b in rows)
    assert {b.key for b in rows} == {c.key for c in ONEIG.columns}
    assert all(b.text == f"{b.value:.3f}" for b in rows)  # three decimals, as printed
    by = {(b.model, b.key): b.value for b in rows}
    assert by[("GPT-4o", "oneig/alignment")] == 0.851 and by[("Stable Diffusion 3.5 Large", "oneig/text")] == 0.629
    assert by[("Stable Diffusion 1.5", "oneig/diversity")] == 0.429 and by[("Flux.1-dev", "oneig/style")] == 0.368
    assert all("OneIG-Bench README" in b.source for b in rows)


@pytest.mark.parametrize("path", sorted(SHIPPED_BASELINES.glob("*.csv")), ids=lambda p: p.stem)
def test_every_shipped_baseline_row_has_a_source_and_a_table(path):
    rows = load_baselines(path)
    assert rows and all(b.source.strip() for b in rows)
    lb = build_leaderboard([], rows)
    shown = {c.key for t in lb.tables for c in t.columns}
    assert {b.key for b in rows if b.key != "avg"} <= shown  # every published number appears in some table
