"""OneIG-Bench (reward_models/oneig.py, benchmarks/oneig.py) against OneIG-Bench/OneIG-Benchmark @ 41b4983: the text
score (``text_score.py``, ``text_utils.py``) on crafted OCR replies by hand, the alignment dependency filter
(``alignment_score.py``: raw parents, no cascade) on crafted answers, the one-line bad-input errors, the served
judges against a local chat-completions server, and the suite through the runner on mini-base by hand."""

import csv
import json

import numpy as np
import pytest
from test_reward_judges import SERVED_MODEL, FakeChatServer, _decode_data_url

from flowopd.benchmarks import prompt_sets as PS
from flowopd.benchmarks.oneig import alignment_metrics, text_metrics
from flowopd.benchmarks.suites import get_suite
from flowopd.errors import InputError
from flowopd.reward_models import get_reward_class
from flowopd.reward_models.oneig import (
    OneIGAlignment,
    OneIGText,
    clean_ocr,
    dependency_filtered,
    is_exact_yes,
    preprocess_text,
    text_score,
    text_tile_stats,
    upstream_tile,
)

CSV_ENV = "FLOWOPD_PROMPTS_ONEIG"
GT = "['Hello World', 'Sale 50%']"  # upstream keeps the list-like string; preprocessing strips [ ' , %


def _q(qid, *parents, text=None):
    return {"id": qid, "parents": list(parents), "question": text or f"q{qid}?"}


# ----------------------------------------------------------------------------- the text score


def test_preprocessing_and_cleaning_as_upstream():
    assert preprocess_text(GT) == "Hello World Sale 50"  # punctuation gone, case kept
    assert preprocess_text("  Café\n\tdéjà  vu! ") == "Café déjà vu"  # French accents kept, whitespace collapsed
    assert preprocess_text("你好 世界, OK") == "你好世界OK"  # with CJK every space goes
    assert clean_ocr("addCriterionHi No text recognized.") == "Hi "


def test_text_tiles_and_the_pooled_formula_by_hand():
    tiles = [
        text_tile_stats("Hello World\nSale 50%", GT),  # exact after preprocessing
        text_tile_stats("hello World! No text recognized.", GT),  # "hello World": H->h (1) + " Sale 50" (8) deleted
        text_tile_stats("Hello World Sale", GT),  # " 50" missing
    ]
    assert tiles == [
        {"ed": 0, "cr": 1, "matched_words": 4, "gt_words": 4},
        {"ed": 9, "cr": 0, "matched_words": 1, "gt_words": 4},  # case kept: "hello" does not match "Hello"
        {"ed": 3, "cr": 0, "matched_words": 3, "gt_words": 4},
    ]
    # word matches are a multiset: "ab" twice in the truth matches at most twice; "cd" -> "ab" is 2 edits
    assert text_tile_stats("ab ab ab", "ab ab cd") == {"ed": 2, "cr": 0, "matched_words": 2, "gt_words": 3}
    # pooled: ED = 12/3 = 4, CR = 1/3, WAC = 8/12; 1 - 4 (2/3) (1/3) / 100
    records = [_text_record("000", k, t) for k, t in enumerate(tiles[:2])] + [_text_record("001", 0, tiles[2])]
    m = text_metrics(records)
    assert m["text/ED"]["mean"] == pytest.approx(4.0) and m["text/CR"]["mean"] == pytest.approx(1 / 3)
    assert m["text/WAC"]["mean"] == pytest.approx(2 / 3) and m["text"]["mean"] == pytest.approx(1 - 8 / 900)
    assert m["text"]["n"] == 3 and m["text"]["prompts"] == 2 and m["text"]["ci95"][0] <= m["text"]["ci95"][1]
    assert text_score(250, 0, 0) == 0.0 and text_score(150, 0.5, 0.5) == pytest.approx(0.75)  # ED capped at 100


def _text_record(prompt_id, index, stats, failed=False):
    score = {"raw": None, "failed": True, "details": {"error": "x"}} if failed else {"raw": 0.5, "details": stats}
    return {"prompt": prompt_id, "index": index, "metadata": {"folder": "text", "id": prompt_id}, "scores": {"oneig_text": score}}


# ----------------------------------------------------------------------------- alignment


def test_the_dependency_filter_reads_raw_parents_without_cascade():
    questions = [_q(1), _q(2, 1), _q(3, 2), _q(4, 5), _q(5, 0)]  # 4's parent comes later; 0 means none
    # 1 says no: 2 -> 0; 3's parent 2 said yes (raw), so 3 keeps its yes (DPG's cascade would zero it); 4 follows 5's raw no
    assert dependency_filtered([0, 1, 1, 1, 0], questions) == [0, 0, 1, 0, 0]
    assert dependency_filtered([1, 1, 1, 1, 1], questions) == [1, 1, 1, 1, 1]
    assert [is_exact_yes(r) for r in ("Yes", "Yes.", "yes", " Yes", "Yes\n", "No")] == [True, False, False, False, False, False]


def test_alignment_pools_prompts_over_folders_by_hand():
    def tile(folder, pid, index, raw):
        return {"index": index, "metadata": {"folder": folder, "id": pid}, "scores": {"oneig_alignment": {"raw": raw, "details": {}}}}

    records = [tile("anime", "000", 0, 1.0), tile("anime", "000", 1, 0.5), tile("anime", "001", 0, 0.0),
               tile("human", "000", 0, 0.25), {**tile("human", "000", 1, None), "scores": {"oneig_alignment": {
                   "raw": None, "failed": True, "details": {"error": "HTTP 500"}}}}]  # fmt: skip
    m = alignment_metrics(records)
    assert m["alignment"]["mean"] == pytest.approx((0.75 + 0.0 + 0.25) / 3) and m["alignment"]["n"] == 3  # not a mean of folders
    assert m["alignment/anime"]["mean"] == pytest.approx(0.375) and m["alignment/human"]["n"] == 1 and "alignment/object" not in m


# ----------------------------------------------------------------------------- the files


def _write_scripts(root, questions, truth):
    """Upstream's layout: questions[folder] = {id: [(question, [parents])]}; truth = {id: text_content}."""
    qd = root / "oneig_bench/scripts/alignment/Q_D"
    qd.mkdir(parents=True, exist_ok=True)
    for folder in ("anime", "human", "object"):
        entries = {
            pid: {"question": json.dumps({str(k): q for k, (q, _) in enumerate(qs, 1)}),
                  "dependency": json.dumps({str(k): deps for k, (_, deps) in enumerate(qs, 1)})}
            for pid, qs in questions.get(folder, {}).items()
        }  # fmt: skip
        (qd / f"{folder}.json").write_text(json.dumps(entries, indent=2))
    text_dir = root / "oneig_bench/scripts/text"
    text_dir.mkdir(parents=True, exist_ok=True)
    with (text_dir / "text_content.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text_content"])
        writer.writerows(truth.items())


def test_the_set_reads_the_real_csv_and_attaches_questions(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(CSV_ENV, str(shared_data / "oneig_bench/OneIG-Bench.csv"))
    _write_scripts(tmp_path, {"human": {"000": [("Is there a man?", [0]), ("Is he smiling?", [1])]}}, {"000": GT})
    prompts = PS.resolve("oneig")
    assert len(prompts) == 1120 and PS.PROMPT_SETS["oneig"].size == 1120
    human = next(p for p in prompts if p.metadata["category"] == "Portrait")
    assert human.metadata["questions"] == [_q(1, text="Is there a man?"), _q(2, 1, text="Is he smiling?")]
    text = next(p for p in prompts if p.metadata["folder"] == "text")
    assert text.metadata["text_content"] == GT and text.task == "text" and text.metadata["id"] == "000"
    assert get_suite("oneig").missing_inputs() is not None  # no server configured
    (tmp_path / "oneig_bench/scripts/text/text_content.csv").unlink()
    reason = get_suite("oneig").missing_inputs()
    assert f"{tmp_path}/oneig_bench/scripts/text/text_content.csv" in reason and "copy them from" in reason and "\n" not in reason


def test_an_unknown_category_is_one_line_naming_file_and_line(shared_data, tmp_path, monkeypatch):
    lines = (shared_data / "oneig_bench/OneIG-Bench.csv").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "OneIG-Bench.csv"
    bad.write_text("\n".join([*lines[:3], "Multilingualism,000,一只猫,NP,short,", *lines[3:5]]) + "\n", encoding="utf-8")
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(CSV_ENV, str(bad))
    with pytest.raises(InputError, match=rf"^{bad}:4: unknown category 'Multilingualism'; use one of Anime_Stylization, ") as err:
        PS.resolve("oneig")
    assert "\n" not in str(err.value)
    bad.write_text("\n".join([*lines[:3], lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{bad}:4: Anime_Stylization id 001 is also on line 3"):
        PS.resolve("oneig")


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        (
            '{\n  "000": {"question": "{\\"1\\": \\"A?\\"}", "dependency": "{\\"1\\": [2]}"}\n}',
            2,
            r"prompt '000': question 1's dependency \[2\]",
        ),
        ('{\n  "000": {"question": "{}",\n', 3, r"not JSON"),
        ('{\n  "000": {},\n  "001": {"question": "{\\"1\\": \\"A?\\"}", "dependency": "{}"}\n}', 2, r"prompt '000': its question field"),
    ],
)
def test_a_bad_question_file_is_one_line(shared_data, tmp_path, monkeypatch, content, line, says):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(CSV_ENV, str(shared_data / "oneig_bench/OneIG-Bench.csv"))
    _write_scripts(tmp_path, {}, {"000": GT})
    path = tmp_path / "oneig_bench/scripts/alignment/Q_D/human.json"
    path.write_text(content)
    with pytest.raises(InputError, match=rf"^{path}:{line}: .*{says}") as err:
        PS.resolve("oneig")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- served


@pytest.fixture
def server(monkeypatch):
    for reward in ("ALIGNMENT", "TEXT"):
        for key in ("URL", "MODEL", "API_KEY"):
            monkeypatch.delenv(f"FLOWOPD_ONEIG_{reward}_{key}", raising=False)
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_the_served_alignment_judge(server):
    server.script("y", ("reply", "Yes"))
    server.script("p", ("reply", "Yes."))  # not exactly "Yes": 0
    server.script("e", ("status", 422, "unprocessable"))
    meta = [
        {"questions": [_q(1, text="Cat case:y?"), _q(2, 1, text="Red case:p?"), _q(3, 2, text="Big case:y?")]},
        {"questions": [_q(1, text="Cat case:y?"), _q(2, text="Dog case:e?")]},
        {"questions": [_q(1, text="Cat case:y?")]},
    ]
    images = _images(3)
    images[2] = 0  # all black: dropped
    reward = OneIGAlignment(base_url=server.url, timeout=0.5, max_retries=0, backoff=0.01, concurrency=4)
    assert reward.identity() == f"served:{SERVED_MODEL}" and get_reward_class("oneig_alignment") is OneIGAlignment
    scores = reward.score(images, ["a", "b", "c"], meta)
    d = scores.details[0]
    assert d["replies"] == ["Yes", "Yes.", "Yes"] and d["raw_answers"] == [1, 0, 1] and d["filtered_answers"] == [1, 0, 0]
    assert scores.raw[0].item() == pytest.approx(1 / 3) and scores.failed.tolist() == [False, True, True]
    assert "question 2" in scores.details[1]["error"] and "all-black" in scores.details[2]["error"]  # NaN, never 0
    payload = next(p for p in server.payloads("y") if p["messages"][0]["content"][1]["text"].startswith("Big"))
    assert payload["messages"][0]["content"][1]["text"] == "Big case:y?. Please answer 'Yes' or 'No' only."
    assert (payload["max_tokens"], payload["temperature"], payload["repetition_penalty"]) == (128, 0, 1.05)
    sent = _decode_data_url(payload["messages"][0]["content"][0]["image_url"]["url"])
    assert np.array_equal(sent, upstream_tile(images[0])) and not np.array_equal(sent, images[0])  # the JPEG q75 round trip
    assert server.counts["y"] == 2 + 1  # the black tile is never sent


def test_the_served_ocr_judge(server):
    images = _images(3, seed=1)
    long_truth = " ".join(f"w{k}" for k in range(61))  # more than 60 words: 256 tokens
    server.mark_image(upstream_tile(images[0]), "o1")
    server.mark_image(upstream_tile(images[1]), "o2")
    server.script("o1", ("reply", "hello World! No text recognized."))
    server.script("o2", ("status", 500, "boom"))
    reward = OneIGText(base_url=server.url, timeout=0.5, max_retries=0, backoff=0.01)
    assert get_reward_class("oneig_text") is OneIGText
    scores = reward.score(images, ["a"] * 3, [{"text_content": GT}, {"text_content": GT}, {"text_content": long_truth}])
    d = scores.details[0]
    assert (d["ed"], d["cr"], d["matched_words"], d["gt_words"]) == (9, 0, 1, 4)
    assert scores.raw[0].item() == pytest.approx(1 - 9 * 1 * 0.75 / 100)  # this tile alone
    assert scores.failed.tolist() == [False, True, False] and "OCR request" in scores.details[1]["error"]
    assert [p["max_tokens"] for p in server.payloads("o1")] == [128] and server.payloads("")[0]["max_tokens"] == 256
    assert server.payloads("o1")[0]["messages"][0]["content"][1]["text"].startswith("Recognize the text in the image, only reply")


def test_the_suite_end_to_end_through_the_runner(server, shared_data, tmp_path, monkeypatch):
    """``flowopd eval --suite oneig --limit 1`` on mini-base with the real CSV and small scripts files: the first prompt
    of each scored folder (id 000), every tile answering alike; the summary against the formulas by hand."""
    from flowopd.benchmarks.runner import EvalConfig, run_eval

    questions = {
        "anime": {"000": [("Girls case:n?", [0]), ("Smiling case:y?", [1]), ("Red eyes case:y?", [2])]},  # [0, 0, 1]
        "human": {"000": [("A man case:y?", [0]), ("Hat case:p?", [0])]},  # "Yes." counts 0: [1, 0]
        "object": {"000": [("A cup case:y?", [0])]},
    }
    _write_scripts(tmp_path / "data", questions, {"000": GT})
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(CSV_ENV, str(shared_data / "oneig_bench/OneIG-Bench.csv"))
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FLOWOPD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLOWOPD_ONEIG_ALIGNMENT_URL", server.url)
    monkeypatch.setenv("FLOWOPD_ONEIG_TEXT_URL", server.url)
    server.script("y", ("reply", "Yes"))
    server.script("n", ("reply", "No"))
    server.script("p", ("reply", "Yes."))
    server.script("", ("reply", "Hello World Sale"))  # the OCR requests carry no marker: ED 3, CR 0, 3 of 4 words
    summary = run_eval(EvalConfig(suites=["oneig"], model="mini-base", limit=1), tmp_path / "out")
    assert server.counts["y"] == 4 * 4 and server.counts["n"] == 4 and server.counts["p"] == 4 and server.counts[""] == 4
    m = summary["metrics"]
    anime, human, obj = 1 / 3, 1 / 2, 1.0
    assert m["oneig/alignment"]["mean"] == pytest.approx((anime + human + obj) / 3) and m["oneig/alignment"]["n"] == 3
    for folder, value in (("anime", anime), ("human", human), ("object", obj)):
        assert (m[f"oneig/alignment/{folder}"]["mean"], m[f"oneig/alignment/{folder}"]["n"]) == (pytest.approx(value), 1)
    assert m["oneig/text/ED"]["mean"] == pytest.approx(3.0) and m["oneig/text/CR"]["mean"] == 0.0
    assert m["oneig/text/WAC"]["mean"] == pytest.approx(0.75) and m["oneig/text"]["n"] == 4
    assert m["oneig/text"]["mean"] == pytest.approx(1 - 3 * 1 * 0.25 / 100)
