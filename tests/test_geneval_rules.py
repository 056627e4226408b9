"""The GenEval rules engine on hand-built detections, and on the official metadata file."""

import json

import pytest

from flowopd.reward_models import geneval_rules as R
from flowopd.reward_models.geneval_rules import DetectedObject as D


def by_colour(objs, _cls):
    return [o.color for o in objs]


def ev(dets, meta):
    return R.evaluate(dets, meta, by_colour)


def test_single_object_at_least_one_strict_but_extra_objects_cost_partial_credit():
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
    one = ev({"dog": [D((0, 0, 10, 10), 0.8)]}, meta)
    two = ev({"dog": [D((0, 0, 10, 10), 0.8), D((20, 0, 30, 10), 0.7)]}, meta)
    assert one.correct and one.score == 1.0
    assert two.correct  # official rule: at least one
    assert two.score == 0.0  # Flow-GRPO's reward: 1 - |1 - 2| / 1, floored at 0


def test_confidence_thresholds():
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    assert not ev({"cat": [D((0, 0, 5, 5), 0.3)]}, meta).correct  # strictly greater than 0.3
    assert ev({"cat": [D((0, 0, 5, 5), 0.31)]}, meta).correct
    count = {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}]}
    boxes = [D((0, 0, 5, 5), 0.95), D((10, 0, 15, 5), 0.85)]
    assert not ev({"cat": boxes}, count).correct  # counting needs > 0.9
    boxes[1].score = 0.91
    assert ev({"cat": boxes}, count).correct


def test_counting_exclude_clause():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    three = [D((i * 10, 0, i * 10 + 5, 5), 0.95) for i in range(3)]
    res = ev({"cup": three}, meta)
    assert not res.correct and res.reasons == ["expected cup<3, found 3"]
    assert res.score == pytest.approx(0.5)


def test_at_most_sixteen_objects_per_class():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    many = {"cup": [D((i, 0, i + 1, 1), 0.95) for i in range(40)]}
    assert len(R.select_objects(many, "counting")["cup"]) == 16
    assert ev(many, meta).score == 0.0


def test_colour_clause_uses_the_most_confident_objects():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    dets = {"car": [D((0, 0, 5, 5), 0.5, "blue"), D((9, 0, 14, 5), 0.9, "red")]}
    assert ev(dets, meta).correct  # the 0.9 red car is checked first
    dets["car"][1].color = "green"
    res = ev(dets, meta)
    assert not res.correct and "expected red car>=1, found 0 red" in res.reasons[0]


def test_position_with_threshold():
    meta = {"tag": "position", "include": [{"class": "b", "count": 1}, {"class": "a", "count": 1, "position": ["left of", 0]}]}
    b = D((50, 0, 60, 10), 0.9)
    assert ev({"a": [D((0, 0, 10, 10), 0.9)], "b": [b]}, meta).correct
    # centres 3 px apart, boxes 10 wide: inside the 0.1 * (10 + 10) slack -> no relation
    res = ev({"a": [D((47, 0, 57, 10), 0.9)], "b": [b]}, meta)
    assert not res.correct and res.score == pytest.approx(2 / 3)
    assert R.relative_position((0, 0, 10, 10), (0, 50, 10, 60)) == {"above"}
    assert R.relative_position((0, 0, 10, 10), (50, 50, 60, 60)) == {"left of", "above"}  # a diagonal is both


def test_missing_target_fails_position():
    meta = {"tag": "position", "include": [{"class": "b", "count": 1}, {"class": "a", "count": 1, "position": ["above", 0]}]}
    res = ev({"a": [D((0, 0, 10, 10), 0.9)]}, meta)
    assert not res.correct
    assert res.score == pytest.approx(1 / 3)  # b: count 0 -> credits 0 (+0 none); a: count 1, position 0


def test_validate_metadata_names_the_problem():
    with pytest.raises(ValueError, match="include"):
        R.validate_metadata({"tag": "x"})
    with pytest.raises(ValueError, match="'class' and 'count'"):
        R.validate_metadata({"include": [{"class": "a"}]})
    with pytest.raises(ValueError, match="earlier include clause"):
        R.validate_metadata({"include": [{"class": "a", "count": 1, "position": ["above", 0]}]})


def test_official_metadata_file_validates_and_covers_six_tags(shared_data):
    path = shared_data / "geneval" / "evaluation_metadata.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(recs) == 553
    for rec in recs:
        R.validate_metadata(rec)
    assert {r["tag"] for r in recs} == set(R.TAGS)


def test_official_metadata_perfect_detections_score_one(shared_data):
    """Build detections that satisfy each official record; the engine must accept all 553."""
    path = shared_data / "geneval" / "evaluation_metadata.jsonl"
    offsets = {"left of": (-40, 0), "right of": (40, 0), "above": (0, -40), "below": (0, 40)}
    for line in path.read_text().splitlines():
        meta = json.loads(line)
        dets: dict[str, list] = {}
        centres = []
        for clause in meta["include"]:
            cx, cy = 100.0, 100.0
            if clause.get("position"):
                tx, ty = centres[int(clause["position"][1])]
                dx, dy = offsets[clause["position"][0]]
                cx, cy = tx + dx, ty + dy
            centres.append((cx, cy))
            for k in range(int(clause["count"])):
                x = cx + 200 * len(dets.get(clause["class"], [])) + k * 0.0
                dets.setdefault(clause["class"], []).append(D((x - 5, cy - 5, x + 5, cy + 5), 0.99, clause.get("color")))
        res = ev(dets, meta)
        assert res.correct and res.score == 1.0, (meta["prompt"], res.reasons)
