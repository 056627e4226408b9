"""Paired comparisons against a baseline run: image-by-image differences, averaged like the metric itself."""

import pytest

from flowopd.benchmarks.report import deltas_markdown, paired_deltas


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
