"""Ground truth scores 1.0, and controlled corruptions lower exactly the scores they should."""

import dataclasses

import numpy as np
import pytest

from flowopd.mini import world
from flowopd.mini.world import COLORS, PromptRecord, Scene, render_scene, scene_for
from flowopd.reward_models import load_reward

GENEVAL = load_reward("mini_geneval")
OCR = load_reward("mini_ocr")
PREF = load_reward("mini_preference")
QUALITY = load_reward("mini_quality")


def pil(arr):
    from PIL import Image

    return Image.fromarray(arr)


def score(reward, arr, rec: PromptRecord):
    s = reward.score([pil(arr)], [rec.prompt], [rec.metadata])
    return float(s.raw[0]), s.details[0]


@pytest.mark.parametrize("tag", world.COMPOSE_TAGS)
def test_ground_truth_compose_scores_one(tag):
    rng = np.random.default_rng(0)
    for rec in world.make_prompts("compose", 30, seed=3, split="all", tag=tag):
        raw, details = score(GENEVAL, world.render(rec, rng), rec)
        assert details["correct"], (rec.prompt, details["reasons"])
        assert raw == 1.0, rec.prompt


def test_ground_truth_text_scores_one():
    rng = np.random.default_rng(0)
    recs = world.make_prompts("text", 200, seed=4, split="all")
    s = OCR.score([pil(world.render(r, rng, ideal=True)) for r in recs], [r.prompt for r in recs])
    assert s.raw.min().item() == 1.0
    assert [d["read"] for d in s.details] == [r.metadata["text"] for r in recs]


def test_ideal_renders_score_top_marks_on_preference_and_quality():
    """What the judges prefer (centred, at the canonical size, clean) scores >= 0.98 of the scale."""
    rng = np.random.default_rng(0)
    for task in ("preference", "quality"):
        recs = world.make_prompts(task, 40, seed=5, split="all")
        imgs = [pil(world.render(r, rng, ideal=True)) for r in recs]
        pref = PREF.score(imgs, [r.prompt for r in recs], [r.metadata for r in recs]).raw
        qual = QUALITY.score(imgs, [r.prompt for r in recs]).raw
        if task == "preference":
            assert pref.min() >= 0.98, task
        assert qual.min() >= 4.9, task


def test_the_pretraining_data_spreads_below_what_the_judges_prefer():
    """The data, like web images, holds off-centre, smaller and degraded pictures: room for a teacher above the base."""
    rng = np.random.default_rng(1)
    recs = world.make_prompts("preference", 200, seed=6, split="all")
    pref = PREF.score([pil(world.render(r, rng)) for r in recs], [r.prompt for r in recs], [r.metadata for r in recs]).raw
    assert 0.3 < float(pref.mean()) < 0.6 and float(pref.max()) >= 0.98
    recs = world.make_prompts("quality", 200, seed=6, split="all")
    qual = QUALITY.score([pil(world.render(r, rng)) for r in recs], [r.prompt for r in recs]).raw
    assert 2.8 < float(qual.mean()) < 3.8 and float(qual.max()) >= 4.9
    recs = world.make_prompts("text", 300, seed=6, split="all")
    ocr = OCR.score([pil(world.render(r, rng)) for r in recs], [r.prompt for r in recs]).raw
    assert abs(float(ocr.mean()) - (1 - world.TEXT_TYPO_RATE)) < 0.06 and float(ocr.max()) == 1.0 and float(ocr.min()) == 0.0


def test_misquote_changes_digits_at_its_rate_and_never_keeps_a_replaced_one():
    rng = np.random.default_rng(3)
    text = "0123456789" * 100
    assert world.misquote(text, rng, 0.0) == text
    assert all(a != b for a, b in zip(text, world.misquote(text, rng, 0.999)))
    changed = sum(a != b for a, b in zip(text, world.misquote(text, rng, 0.4))) / len(text)
    assert 0.35 < changed < 0.45


@pytest.mark.parametrize("finish", world.FINISHES[1:])
def test_each_degraded_finish_lowers_quality_and_not_the_detector(finish):
    rng = np.random.default_rng(2)
    for rec in world.make_prompts("quality", 10, seed=7, split="all"):
        scene = scene_for(rec, rng, ideal=True)
        clean = render_scene(scene, rng)
        degraded = render_scene(dataclasses.replace(scene, finish=finish), rng)
        assert score(QUALITY, degraded, rec)[0] < score(QUALITY, clean, rec)[0] - 1.0, (finish, rec.prompt)


def _two_object_scene():
    rec = world.parse_prompt("a photo of a red square and a blue circle")
    scene = Scene("black", [("square", "red", (3, 10, 11, 11)), ("circle", "blue", (18, 10, 11, 11))])
    return rec, scene


def test_missing_object_lowers_geneval_only():
    rec, scene = _two_object_scene()
    full = render_scene(scene)
    missing = render_scene(Scene("black", scene.objects[:1]))
    raw_full, d_full = score(GENEVAL, full, rec)
    raw_miss, d_miss = score(GENEVAL, missing, rec)
    assert d_full["correct"] and raw_full == 1.0
    assert not d_miss["correct"] and raw_miss == pytest.approx(0.5)  # square clause 1+1, circle clause 0+0
    assert any("circle" in r for r in d_miss["reasons"])
    assert score(QUALITY, missing, rec)[0] > 4.9  # still a clean image


def test_strict_geneval_scores_what_evaluation_counts():
    """``mini_geneval@strict``: 1 where every clause holds, 0 where the partial credit gives 0.5 (one object of two)."""
    strict = load_reward("mini_geneval@strict")
    rec, scene = _two_object_scene()
    full, missing = render_scene(scene), render_scene(Scene("black", scene.objects[:1]))
    assert score(strict, full, rec)[0] == 1.0
    raw, details = score(strict, missing, rec)
    assert raw == 0.0 and not details["correct"] and score(GENEVAL, missing, rec)[0] == pytest.approx(0.5)


def test_wrong_colour_lowers_only_the_colour_credit():
    rec = world.parse_prompt("a photo of a red triangle")
    right = render_scene(Scene("black", [("triangle", "red", (8, 8, 16, 16))]))
    wrong = render_scene(Scene("black", [("triangle", "green", (8, 8, 16, 16))]))
    assert score(GENEVAL, right, rec)[0] == 1.0
    raw, details = score(GENEVAL, wrong, rec)
    assert not details["correct"] and raw == pytest.approx(0.5)  # count credit 1, colour credit 0
    assert details["detections"][0]["class"] == "triangle"
    assert score(PREF, wrong, rec)[0] < score(PREF, right, rec)[0] - 0.2


def test_swapped_position_fails_the_relation():
    rec = world.parse_prompt("a photo of a circle left of a square")
    good = Scene("black", [("circle", "yellow", (2, 10, 11, 11)), ("square", "purple", (19, 10, 11, 11))])
    swapped = Scene("black", [("circle", "yellow", (19, 10, 11, 11)), ("square", "purple", (2, 10, 11, 11))])
    assert score(GENEVAL, render_scene(good), rec)[0] == 1.0
    raw, details = score(GENEVAL, render_scene(swapped), rec)
    assert not details["correct"]
    assert raw == pytest.approx(2 / 3)  # square count 1, circle count 1, position 0
    assert "right of" in details["reasons"][0]


def test_counting_needs_the_exact_count():
    rec = world.parse_prompt("a photo of three squares")
    boxes = [(2, 2, 9, 9), (20, 2, 9, 9), (2, 20, 9, 9), (20, 20, 9, 9)]
    three = render_scene(Scene("black", [("square", "red", b) for b in boxes[:3]]))
    four = render_scene(Scene("black", [("square", "red", b) for b in boxes]))
    assert score(GENEVAL, three, rec)[1]["correct"]
    raw, details = score(GENEVAL, four, rec)
    assert not details["correct"] and raw == pytest.approx(2 / 3)


def test_wrong_digit_lowers_ocr_only():
    rec = world.parse_prompt('the text "4821"')
    img = render_scene(Scene("text", [], text="4821"))
    bad = render_scene(Scene("text", [], text="4871"))
    assert score(OCR, img, rec)[0] == 1.0
    raw, details = score(OCR, bad, rec)
    assert raw == pytest.approx(0.75) and details["read"] == "4871"
    assert score(QUALITY, bad, rec)[0] == pytest.approx(score(QUALITY, img, rec)[0], abs=0.05)


def test_substring_counts_as_exact():
    rec = world.parse_prompt('the text "82"')
    assert score(OCR, render_scene(Scene("text", [], text="4821")), rec)[0] == 1.0


def test_noise_lowers_quality_not_composition():
    rec = world.parse_prompt("a photo of a blue circle")
    clean = render_scene(Scene("black", [("circle", "blue", (8, 8, 16, 16))]))
    rng = np.random.default_rng(0)
    noisy = np.clip(clean.astype(float) + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    q_clean, q_noisy = score(QUALITY, clean, rec)[0], score(QUALITY, noisy, rec)[0]
    assert q_clean > 4.9 and q_noisy < q_clean - 1.0
    assert score(GENEVAL, noisy, rec)[1]["correct"]


def test_blank_image_is_not_a_maximiser():
    rec = world.parse_prompt("a big red circle on a black background")
    blank = np.zeros((32, 32, 3), dtype=np.uint8)
    good = render(rec)
    assert score(PREF, blank, rec)[0] < 0.3 < 0.8 < score(PREF, good, rec)[0]
    assert score(QUALITY, blank, rec)[0] < 3.0
    assert score(GENEVAL, blank, world.parse_prompt("a photo of a circle"))[0] == 0.0


def render(rec):
    return world.render(rec, np.random.default_rng(0))


def test_preference_wants_the_requested_background_and_size():
    rec = world.parse_prompt("a big red circle on a gray background")
    good = render_scene(Scene("gray", [("circle", "red", (6, 6, 20, 20))]))
    wrong_bg = render_scene(Scene("white", [("circle", "red", (6, 6, 20, 20))]))
    too_small = render_scene(Scene("gray", [("circle", "red", (12, 12, 8, 8))]))
    s_good = score(PREF, good, rec)[0]
    assert score(PREF, wrong_bg, rec)[0] < s_good - 0.1
    assert score(PREF, too_small, rec)[0] < s_good - 0.1


def test_scene_sampler_satisfies_every_position_relation():
    rng = np.random.default_rng(1)
    for rel in world.RELATIONS:
        rec = world.parse_prompt(f"a photo of a square {rel} a triangle")
        for _ in range(10):
            scene = scene_for(rec, rng)
            assert score(GENEVAL, render_scene(scene), rec)[1]["correct"]


def test_palette_is_far_apart():
    pal = np.array(list(COLORS.values()), dtype=float)
    d = np.sqrt(((pal[:, None] - pal[None]) ** 2).sum(-1))
    assert d[np.triu_indices(len(pal), 1)].min() > 100


def test_parse_prompt_round_trips_every_family():
    for task in world.TASKS:
        for rec in world.make_prompts(task, 50, seed=7, split="all"):
            parsed = world.parse_prompt(rec.prompt)
            assert parsed.task == rec.task
            assert parsed.metadata == rec.metadata, rec.prompt


def test_parse_prompt_rejects_outside_prompts():
    with pytest.raises(ValueError, match="not a mini-world prompt"):
        world.parse_prompt("a photograph of an astronaut riding a horse")


def test_splits_are_disjoint_and_deterministic():
    train = {r.prompt for r in world.make_prompts("text", 300, seed=1, split="train") if len(r.metadata["text"]) > 1}
    test = {r.prompt for r in world.make_prompts("text", 300, seed=2, split="test") if len(r.metadata["text"]) > 1}
    assert train and test and not train & test
    assert world.make_prompts("compose", 20, seed=9) == world.make_prompts("compose", 20, seed=9)


def test_patch_sized_fragments_are_not_objects():
    """4x4 blocks (the patch size) must not count: otherwise RL could draw 'three squares' as three specks."""
    rec = world.parse_prompt("a photo of three squares")
    specks = render_scene(Scene("black", [("square", "red", b) for b in [(2, 2, 4, 4), (12, 2, 4, 4), (22, 2, 4, 4)]]))
    raw, details = score(GENEVAL, specks, rec)
    assert raw == 0.0 and details["detections"] == []
    assert score(QUALITY, specks, rec)[1]["terms"]["clean"] == 1.0  # 16 px components are not specks for quality


@pytest.mark.parametrize("scale", [1, 2, 8])
def test_every_mini_scorer_reads_an_integer_upscale_as_the_original(scale):
    """`flowopd mini render` and `flowopd sample` write x8 PNGs: scoring one must give the 32 px image's scores."""
    rng = np.random.default_rng(3)
    recs = [world.make_prompts(task, 3, seed=8, split="all") for task in world.TASKS]
    for rec in [r for task_recs in recs for r in task_recs]:
        small = world.render(rec, rng)
        big = np.kron(small, np.ones((scale, scale, 1), dtype=np.uint8))
        for reward in (GENEVAL, OCR, PREF, QUALITY):
            if reward.applies_to(rec.prompt, rec.metadata):
                assert score(reward, big, rec)[0] == pytest.approx(score(reward, small, rec)[0]), (reward.name, rec.prompt, scale)
    assert (
        score(
            OCR,
            np.kron(render_scene(Scene("text", [], text="42")), np.ones((8, 8, 1), dtype=np.uint8)),
            world.parse_prompt('the text "42"'),
        )[0]
        == 1.0
    )
