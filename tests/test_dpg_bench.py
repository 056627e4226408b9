"""DPG-Bench (reward_models/dpg_bench.py, benchmarks/dpg_bench.py) against TencentQQGYLab/ELLA @ 3c228f1
``dpg_bench/compute_dpg_bench.py``: the dependency cascade and the tile score on crafted answers by hand, the
aggregation (prompt = mean of its tiles, categories from the last tile's raw answers, ELLA issue #60) by hand, the CSV
loader's one-line errors, the served judge against a local chat-completions server, and the suite through the runner."""

import csv

import numpy as np
import pytest
from test_reward_judges import SERVED_MODEL, FakeChatServer, _decode_data_url

from flowopd.benchmarks import prompt_sets as PS
from flowopd.benchmarks.dpg_bench import category_key, dpg_metrics
from flowopd.benchmarks.suites import get_suite
from flowopd.errors import InputError
from flowopd.reward_models import get_reward_class
from flowopd.reward_models.dpg_bench import CSV_COLUMNS, DPGServedVQA, answer_is_yes, dependency_filtered, tile_score

REWARD = "dpg_vqa@served-vlm"
URL_ENV = "FLOWOPD_DPG_VQA_SERVED_VLM_URL"
CSV_ENV = "FLOWOPD_PROMPTS_DPG_BENCH"


def _write_csv(path, rows, columns=CSV_COLUMNS):
    """rows: (item_id, proposition_id, dependency, tuple, question), written in the upstream columns."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for item_id, pid, dep, tup, question in rows:
            broad, detailed = (tup.split("(")[0].split("-") + [""])[:2]
            full = {"item_id": item_id, "text": "a prompt", "keywords": "", "proposition_id": pid, "dependency": dep,
                    "category_broad": broad.strip(), "category_detailed": detailed.strip(), "tuple": tup,
                    "question_natural_language": question}  # fmt: skip
            writer.writerow([full[c] for c in columns])
    return path


def _q(qid, *parents, category="entity - whole"):
    return {"id": qid, "parents": list(parents), "category": category, "question": f"q{qid}?"}


# ----------------------------------------------------------------------------- the formula


def test_the_cascade_walks_in_csv_order_by_hand():
    # CSV order: 1; 3 (child of 2, listed before it); 2 (child of 1); 4 (child of 2); 5 (grandchild of 2); 6 (child of 1 and 3)
    questions = [_q(1), _q(3, 2), _q(2, 1), _q(4, 2), _q(5, 4), _q(6, 1, 3)]
    # 1 is 0: 2 and 6 go to 0; 3 sees 2's raw 1 (2 is filtered later) and stays 1; 4 follows 2's filtered 0, 5 follows 4
    assert dependency_filtered([0, 1, 1, 1, 1, 1], questions) == [0, 1, 0, 0, 0, 0]
    assert tile_score([0, 1, 1, 1, 1, 1], questions) == pytest.approx(1 / 6)
    # 2's raw 0 zeroes 3 (listed before it, it reads 2's raw value), 4, then 5 through 4, and 6 through 3
    assert dependency_filtered([1, 1, 0, 1, 1, 1], questions) == [1, 0, 0, 0, 0, 0]
    assert tile_score([1, 1, 1, 1, 0, 1], questions) == pytest.approx(5 / 6)  # a leaf's 0 stays its own
    assert tile_score([1] * 6, questions) == 1.0


def test_a_reply_counts_yes_only_when_its_first_word_is_yes():
    assert [answer_is_yes(r) for r in ("yes", "Yes.", " YES, it is", "no", "No.", "Final Score: 3", "", "yesterday")] == [
        True, True, True, False, False, None, None, None,
    ]  # fmt: skip


def _tile(item, index, raw_answers, questions, reward=REWARD, failed=False):
    filtered = dependency_filtered(raw_answers, questions)
    score = (
        {"raw": None, "failed": True, "details": {"error": "HTTP 500"}}
        if failed
        else {"raw": sum(filtered) / len(filtered), "details": {"raw_answers": raw_answers, "filtered_answers": filtered}}
    )
    return {"prompt": item, "index": index, "metadata": {"item_id": item, "questions": questions}, "scores": {reward: score}}


def test_prompt_scores_and_the_last_tiles_raw_categories_by_hand():
    a = [_q(1), _q(2, 1, category="attribute - color"), _q(3, category="relation - spatial")]
    b = [_q(1, category="entity - whole"), _q(2, 1, category="attribute - color")]
    records = [
        _tile("A", 0, [1, 1, 1], a),  # 1
        _tile("A", 1, [0, 1, 1], a),  # filtered [0, 0, 1]: 1/3
        _tile("A", 2, [1, 0, 0], a),  # 1/3
        _tile("A", 3, [0, 1, 0], a),  # filtered [0, 0, 0]: 0; the last tile: its raw answers give the categories
        _tile("B", 0, [1, 0], b),  # 1/2
        _tile("B", 1, [0, 1], b),  # filtered [0, 0]: 0; the last scored tile of B
        _tile("B", 3, [1, 1], b, failed=True),  # left out (and counted by the runner)
    ]
    m = dpg_metrics(records, REWARD)
    prompt_a, prompt_b = (1 + 1 / 3 + 1 / 3 + 0) / 4, (1 / 2 + 0) / 2
    assert m["overall@served-vlm"]["mean"] == pytest.approx(100 * (prompt_a + prompt_b) / 2) and m["overall@served-vlm"]["n"] == 2
    # last tiles' raw answers: A -> entity 0, attribute-color 1, relation 0; B (index 1) -> entity 0, attribute-color 1
    assert m["L2/entity-whole@served-vlm"]["mean"] == 0.0 and m["L2/entity-whole@served-vlm"]["n"] == 2
    assert m["L2/attribute-color@served-vlm"]["mean"] == 100.0 and m["L2/relation-spatial@served-vlm"]["n"] == 1
    assert m["L1/attribute@served-vlm"]["mean"] == 100.0 and m["L1/relation@served-vlm"]["mean"] == 0.0
    assert set(m) == {f"{k}@served-vlm" for k in ("overall", "L1/entity", "L1/attribute", "L1/relation", "L2/entity-whole",
                                                 "L2/attribute-color", "L2/relation-spatial")}  # fmt: skip
    lo, hi = m["L2/attribute-color@served-vlm"]["ci95"]
    assert 0.0 <= lo < 100.0 and hi == pytest.approx(100.0)  # Wilson's interval, x 100
    assert dpg_metrics(records[-1:], REWARD) == {}
    assert "overall" in dpg_metrics([_tile("A", 0, [1, 1, 1], a, reward="dpg_vqa")], "dpg_vqa")  # an official runtime: plain names
    assert category_key(" attribute  -  other ") == "attribute-other" and category_key("global -") == "global"


# ----------------------------------------------------------------------------- the CSV


GOOD = [("0", 1, "0", "entity - whole (cabbage)", "Are there cabbages?"), ("0", 2, "1", "other - count (cabbage, ==8)", "Are there eight?")]


def test_the_set_joins_the_prompt_files_with_the_csv(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    monkeypatch.setenv(CSV_ENV, str(_write_csv(tmp_path / "dpg_bench.csv", [*GOOD, ("1", 1, "0", "global - (style)", "Is it a photo?")])))
    prompts = PS.resolve("dpg-bench")
    text = (shared_data / "dpg_bench/dpg_bench/prompts/0.txt").read_text().strip()
    assert [p.metadata["item_id"] for p in prompts] == ["0", "1"] and prompts[0].text == text and prompts[0].task == "compose"
    assert prompts[0].metadata["questions"] == [
        {"id": 1, "parents": [], "category": "entity - whole", "question": "Are there cabbages?"},
        {"id": 2, "parents": [1], "category": "other - count", "question": "Are there eight?"},
    ]
    assert prompts[1].metadata["questions"][0]["category"] == "global -"  # upstream's text before "(", as it is
    assert PS.PROMPT_SETS["dpg-bench"].size == 1065 and len(list((shared_data / "dpg_bench/dpg_bench/prompts").glob("*.txt"))) == 1065


@pytest.mark.parametrize(
    ("rows", "line", "says"),
    [
        (
            [*GOOD, ("0", 3, "4", "entity - part (leaf)", "Leaves?")],
            4,
            r"question 3 of item '0' depends on question 4, which the item does not have",
        ),
        ([*GOOD, ("0", 3, "2,4", "entity - part (leaf)", "Leaves?")], 4, r"depends on question 4"),
        ([("0", 1, "2", "entity - whole (a)", "A?"), ("0", 2, "1", "entity - whole (b)", "B?")], 2, r"cyclic dependency \(1 -> 2 -> 1\)"),
        ([*GOOD, ("0", 3, "3", "entity - whole (c)", "C?")], 4, r"cyclic dependency \(3 -> 3\)"),
        ([*GOOD, ("0", "x", "0", "entity - whole (c)", "C?")], 4, r"proposition_id is 'x'; it must be an integer from 1"),
        ([*GOOD, ("0", 0, "0", "entity - whole (c)", "C?")], 4, r"proposition_id is '0'"),
        ([*GOOD, ("0", 2, "0", "entity - whole (c)", "C?")], 4, r"proposition_id 2 twice"),
        ([*GOOD, ("0", 3, "one", "entity - whole (c)", "C?")], 4, r"dependency is 'one'; write the parent proposition ids"),
        ([GOOD[0], ("1", 1, "0", "global - (x)", "X?"), GOOD[1]], 4, r"item '0' started at line 2 and comes back here"),
        ([*GOOD, ("no_such_item", 1, "0", "global - (x)", "X?")], 4, r"item 'no_such_item' has no prompt file .*no_such_item.txt"),
    ],
)
def test_a_bad_csv_line_is_one_line_naming_file_and_line(shared_data, tmp_path, monkeypatch, rows, line, says):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    path = _write_csv(tmp_path / "dpg_bench.csv", rows)
    monkeypatch.setenv(CSV_ENV, str(path))
    with pytest.raises(InputError, match=rf"^{path}:{line}: .*{says}") as err:
        PS.resolve("dpg-bench")
    assert "\n" not in str(err.value)


def test_missing_columns_and_missing_files_say_the_fix(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    path = _write_csv(tmp_path / "dpg_bench.csv", GOOD, columns=tuple(c for c in CSV_COLUMNS if c != "dependency"))
    monkeypatch.setenv(CSV_ENV, str(path))
    with pytest.raises(InputError, match=rf"^{path}:1: missing column\(s\) dependency; a DPG-Bench CSV has the columns item_id,text"):
        PS.resolve("dpg-bench")
    monkeypatch.setenv(CSV_ENV, str(tmp_path / "absent.csv"))
    reason = get_suite("dpg-bench").missing_inputs()
    assert "DPG-Bench questions not at" in reason and "flowopd prompts download dpg-bench" in reason and "\n" not in reason
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv(CSV_ENV, str(path))
    assert "DPG-Bench prompt files not in" in get_suite("dpg-bench").missing_inputs()


# ----------------------------------------------------------------------------- served


@pytest.fixture
def server(monkeypatch):
    for key in ("URL", "MODEL", "API_KEY"):
        monkeypatch.delenv(f"FLOWOPD_DPG_VQA_SERVED_VLM_{key}", raising=False)
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def test_the_served_judge_answers_yes_no_and_garbage(server, monkeypatch):
    server.script("y", ("reply", "Yes."))
    server.script("n", ("reply", "no"))
    server.script("g", ("reply", "I cannot tell"))
    server.script("e", ("status", 422, "unprocessable image"))
    meta = [
        {"item_id": "A", "questions": [_q(1) | {"question": "Cat? case:y"}, _q(2, 1) | {"question": "Red? case:g"},
                                       _q(3, 2) | {"question": "Big? case:y"}, _q(4) | {"question": "Dog? case:n"}]},
        {"item_id": "B", "questions": [_q(1) | {"question": "Cat? case:y"}, _q(2) | {"question": "Red? case:e"}]},
    ]  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    reward = DPGServedVQA(base_url=server.url, timeout=0.5, max_retries=0, backoff=0.01, concurrency=4)
    assert reward.identity() == f"served:{SERVED_MODEL}" and get_reward_class(REWARD) is DPGServedVQA
    scores = reward.score(images, ["a", "b"], meta)
    d = scores.details[0]
    assert d["replies"] == ["Yes.", "I cannot tell", "Yes.", "no"] and d["unclear"] == [2]  # garbage counts 0, as upstream
    assert d["raw_answers"] == [1, 0, 1, 0] and d["filtered_answers"] == [1, 0, 0, 0] and scores.raw[0].item() == pytest.approx(0.25)
    assert scores.failed.tolist() == [False, True] and "question 2" in scores.details[1]["error"]  # NaN, never 0
    # requests run concurrently: find image 0's "Cat?" request among those answered "Yes."
    payload = next(
        p
        for p in server.payloads("y")
        if np.array_equal(_decode_data_url(p["messages"][0]["content"][0]["image_url"]["url"]), images[0])
        and p["messages"][0]["content"][1]["text"].startswith("Cat?")
    )
    assert (payload["max_tokens"], payload["temperature"]) == (4, 0)
    assert payload["messages"][0]["content"][1]["text"] == "Cat? case:y Answer with yes or no."
    with pytest.raises(ValueError, match=r"dpg_vqa@served-vlm: image 0: no DPG-Bench questions"):
        reward.score(images[:1], ["a"], [{"item_id": "A"}])


def test_status_names_the_url_variable(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    ok, reason = DPGServedVQA.weights_status()
    assert not ok and URL_ENV in reason and "\n" not in reason
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:1/v1")
    assert DPGServedVQA.weights_status() == (True, None)


def test_the_suite_end_to_end_through_the_runner(server, shared_data, tmp_path, monkeypatch):
    """``flowopd eval --suite dpg-bench`` on mini-base with a two-item CSV and the real prompt files, scored by the served
    judge answering by the question's marker: the summary against the formula by hand."""
    from flowopd.benchmarks.runner import EvalConfig, run_eval

    rows = [
        ("0", 1, "0", "entity - whole (cabbage)", "Cabbages? case:y"),
        ("0", 2, "1", "other - count (cabbage, ==8)", "Eight? case:n"),
        ("0", 3, "1", "attribute - color (cabbage, green)", "Green? case:y"),
        ("0", 4, "2", "attribute - texture (leaf, crinkled)", "Crinkled? case:y"),  # its parent says no: filtered 0, raw 1
        ("1", 1, "0", "entity - whole (dog)", "Dog? case:y"),
        ("1", 2, "0", "attribute - color (dog, brown)", "Brown? case:g"),  # garbage: 0
        ("1", 3, "2", "relation - spatial (dog, mat, on)", "On a mat? case:y"),
    ]
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    monkeypatch.setenv(CSV_ENV, str(_write_csv(tmp_path / "dpg_bench.csv", rows)))
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FLOWOPD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, server.url)
    server.script("y", ("reply", "Yes"))
    server.script("n", ("reply", "No"))
    server.script("g", ("reply", "maybe"))
    summary = run_eval(EvalConfig(suites=["dpg-bench"], model="mini-base"), tmp_path / "out")
    assert server.counts["y"] == 4 * 5 and server.counts["n"] == 4 and server.counts["g"] == 4  # 4 tiles per prompt
    m = summary["metrics"]
    item0, item1 = (1 + 0 + 1 + 0) / 4, (1 + 0 + 0) / 3  # every tile answers alike
    assert (
        m["dpg-bench/overall@served-vlm"]["mean"] == pytest.approx(100 * (item0 + item1) / 2)
        and m["dpg-bench/overall@served-vlm"]["n"] == 2
    )
    l2 = {
        "entity-whole": (100.0, 2),
        "other-count": (0.0, 1),
        "attribute-color": (50.0, 2),
        "attribute-texture": (100.0, 1),
        "relation-spatial": (100.0, 1),
    }
    l1 = {"entity": (100.0, 2), "other": (0.0, 1), "attribute": (200 / 3, 3), "relation": (100.0, 1)}
    for level, expected in (("L2", l2), ("L1", l1)):
        for cat, (mean, n) in expected.items():
            got = m[f"dpg-bench/{level}/{cat}@served-vlm"]
            assert (got["mean"], got["n"]) == (pytest.approx(mean), n), (level, cat)
    assert not any(k.startswith("dpg-bench/overall") and "@" not in k for k in m)
    assert any("NOT the official" in note for note in get_suite("dpg-bench").notes)
