"""The mini reproduction's target verdicts (issue 14's points 1-4) on crafted tables: each point passes and fails as stated."""

import copy

from flowopd.mini.reproduce import TASKS, check_targets


def _m(mean, half=0.01):
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": 48}


def _paired(**by_task):
    tasks = {t: _m(by_task.get(t, 0.0), 0.02) for t in TASKS}
    mean = sum(v["mean"] for v in tasks.values()) / 4
    return {"tasks": tasks, "mean4": _m(mean, 0.01)}


def _results():
    base = {"compose": _m(0.4), "text": _m(0.4), "preference": _m(0.5), "quality": _m(3.0)}  # quality 1-5: 0.6
    rows = {
        "base": {
            "metrics": base,
            "tags": {"single_object": 0.8, "two_object": 0.3, "counting": 0.2, "colors": 0.6, "position": 0.15, "color_attr": 0.12},
        }
    }
    comp = {
        "teacher-compose - base": _paired(compose=0.25, quality=-0.1),
        "teacher-text - base": _paired(text=0.3, preference=-0.08),
        "teacher-preference - base": _paired(preference=0.2),
        "teacher-quality - base": _paired(quality=0.15),
        "mix-weighted - base": _paired(compose=0.1, text=0.1, preference=0.05),
        "opd - mix-weighted": _paired(compose=0.1, text=0.1, preference=0.1, quality=0.1),
        "opd - base": _paired(compose=0.2, text=0.2, preference=0.1, quality=0.1),
    }
    comp.update({f"mix-weighted - teacher-{t}": _paired(**{t: -0.1}) for t in TASKS})
    teachers = {t: {**_m(-0.01), "within_0.03": True} for t in TASKS}
    return {"rows": rows, "comparisons": comp, "student_vs_teachers": teachers}


def test_every_point_met_on_a_table_that_meets_them():
    assert [t["ok"] for t in check_targets(_results())] == [True, True, True, True]


def test_each_point_fails_when_its_condition_breaks():
    r = copy.deepcopy(_results())
    r["rows"]["base"]["tags"]["position"] = 0.05  # a tag under 0.10
    assert not check_targets(r)[0]["ok"]
    r = copy.deepcopy(_results())
    r["comparisons"]["teacher-text - base"]["tasks"]["text"] = _m(0.15, 0.02)  # short of (1 - 0.4) / 3 = 0.2
    t2 = check_targets(r)[1]
    assert not t2["ok"] and "text +0.150 (needs +0.200) MISSED" in t2["detail"]
    r = copy.deepcopy(_results())
    r["comparisons"]["teacher-text - base"]["tasks"]["preference"] = _m(-0.01, 0.02)  # no longer significant: one seesaw left
    assert not check_targets(r)[1]["ok"]
    r = copy.deepcopy(_results())
    r["comparisons"]["mix-weighted - teacher-text"]["tasks"]["text"] = _m(0.01, 0.02)  # the mix matches a teacher
    assert not check_targets(r)[2]["ok"]
    r = copy.deepcopy(_results())
    r["comparisons"]["opd - base"]["tasks"]["quality"] = _m(-0.05, 0.02)  # the student loses a task
    assert not check_targets(r)[3]["ok"]
