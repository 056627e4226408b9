"""Leaderboard reports: the paper's tables (Avg, best/second), published baselines, JSON, model-index, paired deltas, the CLI."""

import json
import math
from pathlib import Path

import pytest
import yaml
from report_fixtures import make_mini_run, make_real_run, metric, write_run

from flowopd.benchmarks.report import (
    SHIPPED_BASELINES,
    Cell,
    build_leaderboard,
    build_report,
    deltas_markdown,
    load_baselines,
    load_run,
    model_index_yaml,
    paired_deltas,
    rank_cells,
    to_json,
    to_markdown,
)
from flowopd.errors import InputError

PAPER = SHIPPED_BASELINES / "flow-opd-paper.csv"


def _rec(task, prompt, index, value, tag=None):
    reward = {"compose": "mini_geneval", "text": "mini_ocr", "preference": "mini_preference", "quality": "mini_quality"}[task]
    score = {"raw": value, "details": {"correct": bool(value)}}
    return {"task": task, "prompt": prompt, "index": index, "seed": 7 + index, "metadata": {"tag": tag}, "scores": {reward: score}}


def test_paired_deltas_average_like_the_metric():
    base = [_rec("compose", "p", i, 0.0, "single_object") for i in range(4)] + [_rec("compose", "q", i, 0.0, "counting") for i in range(2)]
    base += [_rec("text", "t", i, 0.5) for i in range(4)]
    run = [_rec("compose", "p", i, 1.0 if i < 2 else 0.0, "single_object") for i in range(4)]
    run += [_rec("compose", "q", i, 0.0, "counting") for i in range(2)]
    run += [_rec("text", "t", i, 0.75) for i in range(4)]
    run += [_rec("text", "unpaired", 0, 1.0)]  # no partner in the baseline: ignored
    d = paired_deltas(run, base)
    assert d["compose/geneval_overall"]["mean"] == pytest.approx((0.5 + 0.0) / 2)  # tag means first, then their mean
    assert d["text/mini_ocr"]["mean"] == pytest.approx(0.25) and d["text/mini_ocr"]["n"] == 4
    assert d["text/mini_ocr"]["ci95"] == pytest.approx([0.25, 0.25])  # every pair moved by exactly 0.25
    same = paired_deltas(base, base)  # all-zero differences: a zero-width interval, not a proportion's Wilson interval
    assert same["text/mini_ocr"]["ci95"] == [0.0, 0.0] and same["compose/geneval_overall"]["ci95"] == [0.0, 0.0]
    md = deltas_markdown({"run": d}, "base")
    assert "+0.250 [+0.250, +0.250]*" in md and "+0.250" in md


def test_paired_avg_is_the_mean_of_the_normalised_task_changes():
    """Issue 14 point 5: the report shows the four-task mean's paired change, quality / 5, errors in quadrature."""
    from flowopd.benchmarks.report import paired_avg

    def d(mean, half):
        return {"mean": mean, "ci95": [mean - half, mean + half], "n": 10}

    deltas = {"compose/geneval_overall": d(0.1, 0.04), "text/mini_ocr": d(0.2, 0.04), "preference/mini_preference": d(0.0, 0.04)}
    assert paired_avg(deltas) is None  # quality missing: no Avg
    deltas["quality/mini_quality"] = d(0.5, 0.2)  # 1-5 scale: +0.1 and a half-width of 0.04 on 0-1
    avg = paired_avg(deltas)
    assert avg["mean"] == pytest.approx((0.1 + 0.2 + 0.0 + 0.1) / 4)
    assert avg["ci95"][1] - avg["mean"] == pytest.approx(0.04 * 2 / 4)  # four equal errors: sqrt(4) e / 4
    assert avg["n"] == 40


def _main(lb, table_id="main"):
    (t,) = [t for t in lb.tables if t.spec.id == table_id]
    return t


def _row(t, label):
    return next((i, r) for i, (e, r) in enumerate(t.rows) if e.label == label)


def test_paper_baselines_avg_is_recomputed_and_the_misprints_footnoted():
    rows = load_baselines(PAPER)
    assert len(rows) == 50 + 35 + 25  # Tables 2 (with their printed Avg), 3 and 4
    lb = build_leaderboard([], rows)
    t = _main(lb)
    _, sd = _row(t, "SD-3.5-M")
    assert sd["avg"].value == pytest.approx((0.63 + 0.59 + 4.07 / 5 + 21.64 / 26) / 4)
    assert sd["avg"].value == pytest.approx(0.7166, abs=5e-5)
    printed = {b.model: b.value for b in rows if b.key == "avg"}
    off = set()
    for e, r in t.rows:
        if abs(r["avg"].value - printed[e.label]) > 6e-4:
            off.add(e.label)
    assert off == {"SFT+GRPO-Mix", "Merge+GRPO-Mix"}  # the paper copies SD3.5-M's 0.7166 into these two rows
    assert _row(t, "SFT+GRPO-Mix")[1]["avg"].value == pytest.approx((0.85 + 0.86 + 4.29 / 5 + 21.79 / 26) / 4)
    assert len(lb.notes) == 2 and all("0.7166" in n for n in lb.notes)
    md = to_markdown(lb)
    assert "0.8515" in md and "prints Avg 0.7166" in md


def test_best_and_second_are_marked_and_teacher_scores_left_out():
    lb = build_leaderboard([], load_baselines(PAPER))
    t = _main(lb)
    ranks = {(t.rows[i][0].label, key): rk for (i, key), rk in t.ranks.items()}
    # GenEval: GRPO-GenEval's 0.94 is a teacher score (the paper excludes it), so Flow-OPD (Merge) 0.92 is best, (SFT) 0.91 second
    assert ranks[("Flow-OPD (Merge)", "geneval/overall")] == 1 and ranks[("Flow-OPD (SFT)", "geneval/overall")] == 2
    assert ("GRPO-GenEval", "geneval/overall") not in ranks
    # PickScore: teacher 23.19 left out; Flow-OPD (Merge) 23.08 best, GRPO-DeQA 23.02 second (as blue / green in the paper)
    assert ranks[("Flow-OPD (Merge)", "pickscore/pickscore")] == 1 and ranks[("GRPO-DeQA", "pickscore/pickscore")] == 2
    assert ranks[("Flow-OPD (Merge)", "avg")] == 1 and ranks[("Flow-OPD (SFT)", "avg")] == 2
    assert sum(1 for (_, k), rk in ranks.items() if k == "ocr/accuracy" and rk == 2) == 1  # 0.92 (SFT); GRPO-OCR's 0.92 is a teacher's
    md = to_markdown(lb)
    line = next(ln for ln in md.splitlines() if ln.startswith("| Flow-OPD (Merge) †"))
    assert "**0.92** †1" in line and "**0.9044** †1" in line
    assert "_0.91_ †1" in next(ln for ln in md.splitlines() if ln.startswith("| Flow-OPD (SFT) †"))
    assert "0.94 †1 ‡" in md and "†1 Flow-OPD paper, Table 2" in md


def test_rank_cells_ties_and_rounding():
    cells = [Cell(0.9204), Cell(0.92, source="p"), Cell(0.91), None, Cell(0.99, teacher=True, source="p")]
    assert rank_cells(cells, 2) == [1, 1, 2, None, None]  # equal as printed: both best
    assert rank_cells(cells, 4) == [1, 2, None, None, None]
    assert rank_cells([Cell(0.5), None], 3) == [None, None]  # one value: nothing to compare
    assert rank_cells([Cell(0.0), Cell(0.0), Cell(0.0)], 3) == [None, None, None]  # all tied: nothing stands out


def test_measured_rows_beside_reported_with_ci_and_n(tmp_path):
    run = make_real_run(
        tmp_path, "eval-x", "my-sd", {"geneval/overall": 0.95, "ocr/accuracy": 0.5, "deqa/deqa": 4.0, "pickscore/pickscore": 22.0}
    )
    lb = build_report([run], PAPER)
    t = _main(lb)
    i, r = _row(t, "my-sd")
    assert t.ranks[(i, "geneval/overall")] == 1  # measured and reported ranked together
    assert r["avg"].value == pytest.approx((0.95 + 0.5 + 0.8 + 22 / 26) / 4) and r["avg"].ci95 is not None
    md = to_markdown(lb)
    assert "| my-sd | **0.950** [0.911, 0.988] n=200 |" in md
    assert "**0.92** †1" not in md and "_0.92_ †1" in md  # the paper's best is now second
    doc = to_json(lb)
    json.dumps(doc, allow_nan=False)
    main = next(t for t in doc["tables"] if t["id"] == "main")
    assert [c["label"] for c in main["columns"]] == ["GenEval", "OCR", "DeQA", "PickScore", "Avg"]
    mine = next(r for r in main["rows"] if r["label"] == "my-sd")
    g = mine["cells"]["geneval/overall"]
    assert g["measured"] and g["n"] == 200 and g["ci95"] == pytest.approx([0.9115, 0.9885]) and g["rank"] == 1 and g["source"] is None
    paper = next(r for r in main["rows"] if r["label"] == "SD-3.5-M")
    assert paper["cells"]["geneval/overall"] == {
        "value": 0.63,
        "ci95": None,
        "n": None,
        "measured": False,
        "source": "Flow-OPD paper, Table 2",
        "teacher": False,
        "rank": None,
    }
    assert next(m for m in doc["models"] if m["label"] == "my-sd")["provenance"]["git"] == "abc1234"


def test_mini_tables_skipped_suites_provenance_and_duplicate_labels(tmp_path):
    a = make_mini_run(tmp_path, "run-a", "mini-student", 0.8)
    b = make_mini_run(tmp_path / "other", "run-b", "mini-student", 0.3, train_log=False)
    lb = build_report([a, b], baseline_run=b)
    assert [r.label for r in lb.runs] == ["mini-student (run-a)", "mini-student (run-b)"]
    ids = [t.spec.id for t in lb.tables]
    assert ids == ["main-mini", "per-tag-mini", "mini-rewards"]
    t = _main(lb, "main-mini")
    assert [c.label for c in t.columns] == ["compose", "text", "preference", "quality", "Avg"]
    _, r = _row(t, "mini-student (run-a)")
    assert r["avg"].value == pytest.approx((0.7 + 0.68 + 0.72 + 4.1 / 5) / 4)
    rewards = _main(lb, "mini-rewards")
    assert "mini/quality/mini_geneval" in [c.key for c in rewards.columns]  # a secondary reward on another task's images
    md = to_markdown(lb)
    skipped = (
        "**geneval** (mini-student (run-a), mini-student (run-b)): needs a model for real prompts (--model sd3:&lt;hub id or folder&gt;)"
    )
    assert "## Skipped suites" in md and skipped in md  # said once for both runs
    assert "## Provenance" in md and "git abc1234" in md and "torch 2.13.0" in md and '"seed": 0' in md
    assert "mini/compose/geneval_overall" in md  # the per-model listing names every key
    changes = md.split("change against mini-student")[1].split("##")[0]
    assert "| mini-student (run-a) |" in changes and "run-b" not in changes  # the baseline gets no row of zeros


def test_missing_metrics_render_na_and_avg_needs_all_four(tmp_path):
    run = make_real_run(tmp_path, "r", "partial", {"geneval/overall": 0.7, "ocr/accuracy": 0.6})
    lb = build_report([run])
    t = _main(lb)
    _, r = _row(t, "partial")
    assert r["deqa/deqa"] is None and r["avg"] is None
    assert "per-tag-geneval" not in [t.spec.id for t in lb.tables]  # overall alone: no per-tag table
    line = next(ln for ln in to_markdown(lb).splitlines() if ln.startswith("| partial |"))
    assert line.count("n/a") == 3  # DeQA, PickScore, Avg


def test_legacy_single_suite_run_still_reads(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    summary = {
        "suite": "mini",
        "headline": {"compose": "compose/geneval_overall"},
        "metrics": {"compose/geneval_overall": metric(0.5), "text/mini_ocr": metric(0.4)},
        "n_images": 1,
        "run": {"config": {"model": "/models/old-base", "steps": 8}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "samples.jsonl").write_text(json.dumps(_rec("text", "t", 0, 0.5)) + "\n")
    run = load_run(folder)
    assert run.legacy and run.metrics["mini/compose/geneval_overall"]["mean"] == 0.5 and run.samples("mini")[0]["task"] == "text"
    md = to_markdown(build_report([folder]))
    assert "/models/old-base" in md and "0.500" in md


BAD_CSV = [
    ("model,metric,value\nA,GenEval,0.5\n", 1, "header lacks source"),
    ("model,metric,value,source\nA,GenEval,0.5,p\nB,GenEval,abc,p\n", 3, "value 'abc' is not a number"),
    ("# comment\nmodel,metric,value,source\nA,GenEvl,0.5,p\n", 3, "did you mean GenEval?"),
    ("model,metric,value,source\nA,GenEval,0.5,Paper, Table 2\n", 2, "quote a field that holds a comma"),
    ("model,metric,value,source\nA,GenEval,0.5,\n", 2, "empty source"),
    ("model,metric,value,source\nA,OCR,0.5,p\n\nA,ocr/accuracy,0.6,q\n", 4, "already given at"),
    ("model,metric,value,source,teacher\nA,OCR,0.5,p,maybe\n", 2, "is not yes/no"),
]


@pytest.mark.parametrize("text,line,msg", BAD_CSV)
def test_malformed_baselines_name_file_line_and_fix(tmp_path, text, line, msg):
    f = tmp_path / "b.csv"
    f.write_text(text)
    with pytest.raises(InputError) as exc:
        load_baselines(f)
    s = str(exc.value)
    assert s.startswith(f"{f}:{line}: ") and msg in s and "\n" not in s


def test_json_baselines_and_their_errors(tmp_path):
    good = tmp_path / "b.json"
    good.write_text(json.dumps([{"model": "X", "metric": "PickScore", "value": 22.1, "source": "some paper"}], indent=2))
    (b,) = load_baselines(good)
    assert b.key == "pickscore/pickscore" and b.value == 22.1 and not b.teacher
    bad = tmp_path / "bad.json"
    bad.write_text(
        '[\n  {"model": "X", "metric": "OCR", "value": 0.5, "source": "s"},\n  {"model": "Y", "metric": "OCR", "value": "high", "source": "s"}\n]\n'
    )
    with pytest.raises(InputError, match=rf"^{bad}:3: value 'high' is not a number"):
        load_baselines(bad)
    syntax = tmp_path / "syntax.json"
    syntax.write_text('[\n {"model": "X",\n  "metric": "OCR" "value": 1}\n]')
    with pytest.raises(InputError, match=rf"^{syntax}:3: not valid JSON"):
        load_baselines(syntax)
    with pytest.raises(InputError, match="does not exist.*flow-opd-paper"):
        load_baselines(tmp_path / "nope.csv")


def test_model_index_yaml_parses_with_values(tmp_path):
    run = make_real_run(
        tmp_path, "r", "sd-opd", {"geneval/overall": 0.91, "geneval/counting": 0.8, "deqa/deqa": 4.31, "quality/hpsv2.1": 0.3301}
    )
    mini = make_mini_run(tmp_path, "m", "mini-opd", 0.5, train_log=False)
    lb = build_report([run, mini], PAPER)
    doc = yaml.safe_load(model_index_yaml(lb.entries))
    assert [m["name"] for m in doc["model-index"]] == ["sd-opd", "mini-opd"]  # measured models only
    res = {r["dataset"]["name"]: r for r in doc["model-index"][0]["results"]}
    assert set(res) == {"GenEval", "DrawBench (DeQA)", "DrawBench (image quality rewards)"}
    assert res["GenEval"]["task"]["type"] == "text-to-image"
    g = {m["type"]: m for m in res["GenEval"]["metrics"]}
    assert g["geneval/overall"] == {"type": "geneval/overall", "name": "GenEval", "value": 0.91}
    assert g["geneval/counting"]["value"] == 0.8
    assert res["DrawBench (DeQA)"]["metrics"][0]["value"] == 4.31
    mini_sets = {r["dataset"]["name"] for r in doc["model-index"][1]["results"]}
    assert "flowopd mini world: compose (held-out prompts)" in mini_sets


def test_model_cards_parse_with_huggingface_hubs_own_parsers(tmp_path):
    """Issue 17 #6: the model-index and the model card read back through huggingface_hub's ModelCard and
    model_index_to_eval_results, every metric an EvalResult with its value; publish writes the cards."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from flowopd.benchmarks.publish import publish
    from flowopd.benchmarks.report import model_card

    run = make_real_run(tmp_path, "r", "sd-opd", {"geneval/overall": 0.91, "geneval/counting": 0.8, "deqa/deqa": 4.31})
    mini = make_mini_run(tmp_path, "m", "mini-opd", 0.5, train_log=False)
    lb = build_report([run, mini], PAPER)
    for entry in [e for e in lb.entries if e.measured]:
        doc = yaml.safe_load(model_index_yaml([entry]))
        name, results = model_index_to_eval_results(doc["model-index"])
        assert name == entry.label and len(results) == sum(len(r["metrics"]) for r in doc["model-index"][0]["results"])
        assert all(r.task_type == "text-to-image" and r.metric_value is not None and r.dataset_type for r in results)
        card = ModelCard(model_card(lb, entry))
        assert card.data.model_name == entry.label and card.data.library_name == "flowopd"
        assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {(r.metric_type, r.metric_value) for r in results}
        assert f"# {entry.label}" in card.text and "| " in card.text
    values = {r.metric_type: r.metric_value for r in ModelCard(model_card(lb, lb.entries[0])).data.eval_results}
    assert values["geneval/overall"] == 0.91 and values["deqa/deqa"] == 4.31
    site = publish(lb, tmp_path / "site")
    assert ModelCard((site / "README.md").read_text()).data.model_name == "sd-opd"
    assert ModelCard((site / "model-cards" / lb.entries[1].slug / "README.md").read_text()).data.model_name == "mini-opd"


def test_report_cli_formats_and_errors(tmp_path, run_cli):
    run = make_mini_run(tmp_path, "eval-a", "mini-a", 0.7, train_log=False)
    res = run_cli("report", str(run), "--baselines", str(PAPER))
    assert res.returncode == 0, res.stderr
    assert "## Main results, mini world" in res.stdout and "## Main results (paper Table 2)" in res.stdout  # paper rows: their own table
    res = run_cli("report", str(run), "--baselines", "flow-opd-paper", "--baselines", "oneig-bench")
    assert res.returncode == 0, res.stderr
    assert "## Main results (paper Table 2)" in res.stdout and "| GPT-4o †" in res.stdout  # both files' rows, one report
    res = run_cli("report", str(run), "--format", "json", "--baseline", str(run))
    doc = json.loads(res.stdout)
    assert doc["kind"] == "flowopd-leaderboard" and doc["paired_deltas"]["baseline"] == "mini-a"
    out = tmp_path / "r.html"
    res = run_cli("report", str(run), "--format", "html", "--out", str(out))
    assert res.returncode == 0 and out.read_text().startswith("<!DOCTYPE html>")
    res = run_cli("report", str(run), "--format", "html")
    assert res.returncode == 1 and "pass --out report.html" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / "b.csv"
    bad.write_text("model,metric,value,source\nA,Geneval,x,p\n")
    res = run_cli("report", str(run), "--baselines", str(bad))
    assert res.returncode == 1 and f"{bad}:2: value 'x' is not a number" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("report", str(tmp_path / "none"))
    assert res.returncode == 1 and "does not exist" in res.stderr


def test_nan_metrics_give_valid_json(tmp_path):
    folder = write_run(
        tmp_path / "n", label="empty", world="real", metrics={"ocr/accuracy": {"mean": math.nan, "n": 0, "ci95": [math.nan, math.nan]}}
    )
    doc = to_json(build_report([folder]))
    json.dumps(doc, allow_nan=False)


def test_shipped_baselines_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"flowopd.benchmarks" = ["baselines/*.csv"]' in text


def test_baseline_pairing_across_different_sampling_is_refused(tmp_path):
    """Issue 15 #11: runs sampled with other steps were paired "by prompt and seed" without a word."""
    a = make_mini_run(tmp_path, "run-a", "mini-student", 0.8)
    b = make_mini_run(tmp_path / "other", "run-b", "mini-base", 0.3)
    summary = json.loads((a / "summary.json").read_text())
    summary["suites"]["mini"]["sampling"]["steps"] = 40
    (a / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match=r"sampled differently \(steps 40 vs 8\).*evaluate both with the same settings"):
        build_report([a, b], baseline_run=b)
    with pytest.raises(InputError, match=r"sampled mini with different protocols \(steps 40 vs 8\)"):
        build_report([a, b])  # side by side: refused too (issue 17), unless asked for
    assert any("steps 40 vs 8" in n for n in build_report([a, b], allow_mixed_protocols=True).notes)
