"""The OCR reward formula, and prompt files (real ones from ../shared/data, and malformed ones)."""

import pytest

from flowopd.benchmarks.prompts import load_prompt_file
from flowopd.errors import InputError
from flowopd.reward_models.ocr_formula import ocr_reward, target_text


def test_target_is_between_the_first_quotes():
    assert target_text('A sign that says "Open 24 Hours" and "no"') == "Open 24 Hours"
    assert target_text("no quotes") == "no quotes"


@pytest.mark.parametrize(
    ("target", "read", "expected"),
    [
        ("Hello World", "helloworld", 1.0),  # spaces and case removed
        ("cat", "the cat sat", 1.0),  # substring counts as exact
        ("abcd", "abxd", 0.75),
        ("abcd", "", 0.0),
        ("ab", "zzzzzzzzzz", 0.0),  # distance capped at len(target)
    ],
)
def test_ocr_reward(target, read, expected):
    assert ocr_reward(target, read)[0] == pytest.approx(expected)


def test_real_prompt_files_load(shared_data):
    geneval = load_prompt_file(shared_data / "geneval" / "evaluation_metadata.jsonl")
    assert len(geneval) == 553 and geneval[0].metadata["tag"] == "single_object"
    ocr = load_prompt_file(shared_data / "flow-grpo" / "ocr" / "test.txt", task="text")
    assert len(ocr) == 1018  # 1018 lines; the last has no newline, so `wc -l` says 1017
    assert all(p.task == "text" for p in ocr)
    targets = [target_text(p.text) for p in ocr]
    assert sum(t != p.text for t, p in zip(targets, ocr)) > 1000  # nearly every prompt quotes its text
    for name in ("pickscore_sfw", "drawbench"):
        assert len(load_prompt_file(shared_data / "flow-grpo" / name / "test.txt")) > 900


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a photo of a cat", "tag": "single_object", "include": [{"class": "cat", "count": 1}]}\n{"prompt": oops}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompt_file(bad)
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: .*\"prompt\""):
        load_prompt_file(bad)
    bad.write_text('{"prompt": "x", "include": [{"class": "cat"}]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: GenEval clause 0"):
        load_prompt_file(bad)


def test_other_bad_prompt_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(InputError, match="unknown prompt file type"):
        load_prompt_file(tmp_path / "p.csv")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="no prompts"):
        load_prompt_file(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(InputError, match="UTF-8"):
        load_prompt_file(tmp_path / "latin.txt")
