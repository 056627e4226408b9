"""The OCR rewards: Flow-GRPO's formula through the reward on hand-made engine output, a real RapidOCR read
of rendered text, and the PaddleOCR backend's availability and errors."""

import importlib.util
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from flowopd.errors import FlowOPDError
from flowopd.reward_models import get_reward_class, load_reward
from flowopd.reward_models.ocr import CONFIDENCE_THRESHOLD, PaddleOCRReward, RapidOCRReward, join_confident
from flowopd.reward_models.weights import WEIGHT_SETS, WeightsMissingError

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
BLANK = [Image.new("RGB", (16, 16), "white")]


def levenshtein(a: str, b: str) -> int:
    """Textbook DP edit distance, independent of the rapidfuzz call the reward makes."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def render(text: str, size: int = 512, font_size: int = 56) -> Image.Image:
    """Black text, centred, on a white ``size`` x ``size`` canvas, in a TrueType font."""
    font = ImageFont.truetype(str(FONT), font_size) if FONT.is_file() else ImageFont.load_default(size=font_size)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size - (right - left)) // 2 - left, (size - (bottom - top)) // 2 - top), text, fill="black", font=font)
    return img


def test_registered_names_versions_and_requirements():
    assert get_reward_class("ocr") is RapidOCRReward and get_reward_class("ocr@paddle") is PaddleOCRReward
    assert RapidOCRReward.version == "1-rapidocr3-ppocrv6" and RapidOCRReward.requires == ("rapidocr", "onnxruntime")
    assert PaddleOCRReward.requires == ("paddleocr",) and PaddleOCRReward.weight_sets == ("paddleocr-models",)
    assert RapidOCRReward.weights_status() == (True, None)  # bundled models: nothing to download
    assert all(p.is_file() for p in RapidOCRReward.bundled_models().values())
    assert CONFIDENCE_THRESHOLD == 0.5  # PaddleOCR 2.x drop_score default, under which Flow-GRPO scored


@pytest.mark.parametrize(
    ("lines", "expected", "recognised"),
    [
        ([("Flow OPD", 0.9), ("2026", 0.8)], 1.0, "Flow OPD2026"),  # lines joined with "", spaces and case dropped
        ([("FLOWOPD 2026", 0.99)], 1.0, "FLOWOPD 2026"),
        ([("Big sale: Flow OPD 2026 today", 0.97)], 1.0, "Big sale: Flow OPD 2026 today"),  # substring -> dist 0
        ([("Flow 0PD 2026", 0.95)], 1 - 1 / 11, "Flow 0PD 2026"),  # one substitution in 11 characters
        ([("Flow OPD", 0.95), ("2026", 0.3)], 1 - 4 / 11, "Flow OPD"),  # the 0.3 line is dropped: 4 deletions
        ([("Flow OPD 2026", 0.49)], 0.0, ""),  # below 0.5: nothing read, dist = len(target)
        ([("the quick brown fox jumps over the lazy dog", 0.99)], 0.0, "the quick brown fox jumps over the lazy dog"),  # capped
        ([], 0.0, ""),
    ],
)
def test_formula_through_the_reward_on_hand_made_engine_output(monkeypatch, lines, expected, recognised):
    reward = load_reward("ocr")
    monkeypatch.setattr(reward, "load", lambda: None)
    monkeypatch.setattr(reward, "_read", lambda image: lines)
    scores = reward.score(BLANK, ['a neon sign that says "Flow OPD 2026" at night'])
    d = scores.details[0]
    assert scores.raw[0].item() == pytest.approx(expected, abs=1e-6) and scores.normalized[0].item() == pytest.approx(expected, abs=1e-6)
    assert d["target"] == "Flow OPD 2026" and d["recognised"] == recognised == join_confident(lines)
    assert [x["kept"] for x in d["lines"]] == [c >= 0.5 for _, c in lines]
    assert d["dist"] == round((1 - expected) * 11)


def test_metadata_text_engine_errors_and_applies_to(monkeypatch):
    reward = load_reward("ocr")
    monkeypatch.setattr(reward, "load", lambda: None)
    monkeypatch.setattr(reward, "_read", lambda image: [("hello", 0.9)])
    s = reward.score(BLANK * 2, ['say "x"', "no quotes"], [{"text": "hello"}, None])
    assert s.details[0]["target"] == "hello" and s.details[1]["target"] == "no quotes"  # no quotes: the whole prompt
    assert s.raw.tolist() == pytest.approx([1.0, 1 - levenshtein("hello", "noquotes") / 8])

    def boom(image):
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(reward, "_read", boom)
    s = reward.score(BLANK, ['say "x"'])
    assert s.failed.tolist() == [True] and "engine crashed" in s.details[0]["error"]  # failed, never 0
    assert reward.applies_to('a sign "hi"', None) and reward.applies_to("x", {"text": "hi"}) and not reward.applies_to("a cat", None)


def test_real_rapidocr_reads_rendered_text(record_property):
    reward = load_reward("ocr")
    image = render("Flow OPD 2026")
    t0 = time.perf_counter()
    scores = reward.score([image], ['a sign that says "Flow OPD 2026"'])
    first = time.perf_counter() - t0
    d = scores.details[0]
    print(
        f"\nrapidocr on 512px 'Flow OPD 2026': raw={scores.raw[0].item():.4f} read={d['recognised']!r} lines={d['lines']} first call {first:.2f}s"
    )
    record_property("rapidocr_read", d["recognised"])
    record_property("rapidocr_seconds_first_call", round(first, 3))
    assert scores.raw[0].item() == 1.0 and d["dist"] == 0
    assert d["recognised"].replace(" ", "").lower() == "flowopd2026"

    # A wrong target: the score is the formula on what was read, computed here by hand.
    t0 = time.perf_counter()
    wrong = reward.score([image], ['a poster with "Flow GRPO 2025" on it'])
    again = time.perf_counter() - t0
    read = wrong.details[0]["recognised"].replace(" ", "").lower()
    target = "flowgrpo2025"
    expected = 1 - min(levenshtein(read, target), len(target)) / len(target)
    print(f"wrong target 'Flow GRPO 2025': raw={wrong.raw[0].item():.4f} (by hand {expected:.4f}) read={read!r}, second call {again:.2f}s")
    assert target not in read and wrong.raw[0].item() == pytest.approx(expected)
    assert wrong.details[0]["dist"] == levenshtein(read, target)

    blank = reward.score([Image.new("RGB", (512, 512), "white")], ['a sign that says "Flow OPD 2026"'])
    assert blank.raw.tolist() == [0.0] and blank.details[0]["lines"] == []


def test_paddle_reward_unavailable_with_install_hint():
    ok, reason = PaddleOCRReward.weights_status()
    assert ok is False and "paddleocr" in reason and "pip install 'flowopd[paddle]'" in reason
    assert PaddleOCRReward.install_hint() == "pip install 'flowopd[paddle]'"
    ws = WEIGHT_SETS["paddleocr-models"]
    assert {f.split("/")[0] for f in ws.files} == {"det", "rec", "cls"}


def test_paddle_missing_model_dir_is_a_one_line_error(tmp_path):
    reward = load_reward("ocr@paddle", weights={"paddleocr-models": tmp_path / "nowhere"})
    if importlib.util.find_spec("paddleocr") is None:  # the package is said first: installing comes before weights (issue 15)
        with pytest.raises(FlowOPDError, match="ocr@paddle needs the Python module 'paddleocr'"):
            reward.score(BLANK, ['say "x"'])
        return
    with pytest.raises(WeightsMissingError) as err:
        reward.score(BLANK, ['say "x"'])
    msg = str(err.value)
    assert "\n" not in msg and "flowopd weights download ocr@paddle" in msg and "det/inference.pdmodel" in msg


def test_paddle_model_dir_present_but_paddleocr_missing_is_a_one_line_error(tmp_path):
    if importlib.util.find_spec("paddleocr") is not None:
        pytest.skip("paddleocr is installed here")
    for f in WEIGHT_SETS["paddleocr-models"].files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    reward = load_reward("ocr@paddle", weights={"paddleocr-models": tmp_path})
    with pytest.raises(FlowOPDError) as err:
        reward.score(BLANK, ['say "x"'])
    assert "\n" not in str(err.value) and "pip install 'flowopd[paddle]'" in str(err.value)
