"""Named benchmark prompt sets read from the real upstream files in ../shared/data, overrides, downloads, bad files."""

import json

import pytest

from flowopd.benchmarks import prompt_sets as PS
from flowopd.errors import FlowOPDError, InputError

SHARED_SETS = ["geneval", "geneval2", "ocr", "pickscore", "drawbench", *PS.GROUPS["t2i-compbench"]]


@pytest.fixture()
def data(shared_data, monkeypatch):
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(shared_data))
    for s in PS.PROMPT_SETS.values():
        monkeypatch.delenv(s.env_var, raising=False)
    return shared_data


@pytest.mark.parametrize("name", SHARED_SETS)
def test_each_set_reads_its_upstream_file_with_task_and_metadata(data, name):
    ps = PS.PROMPT_SETS[name]
    prompts = PS.resolve(name)
    assert len(prompts) == ps.size
    assert all(p.task == ps.task and p.metadata["set"] == name and p.text.strip() == p.text and p.text for p in prompts)
    if name.startswith("t2i-compbench/"):
        assert {p.metadata["category"] for p in prompts} == {name.split("/")[1]}


def test_geneval_set_keeps_the_clauses_and_six_tags(data):
    prompts = PS.resolve("geneval")
    assert {p.metadata["tag"] for p in prompts} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    counting = next(p for p in prompts if p.metadata["tag"] == "counting")
    assert counting.metadata["exclude"][0]["count"] == counting.metadata["include"][0]["count"] + 1


def test_geneval2_set_keeps_the_questions_skills_and_atom_counts(data):
    prompts = PS.resolve("geneval2")
    counts = {k: sum(p.metadata["atom_count"] == k for p in prompts) for k in range(3, 11)}
    assert counts == dict.fromkeys(range(3, 11), 100)
    assert all(len(p.metadata["vqa_list"]) == len(p.metadata["skills"]) > 0 for p in prompts)
    first = prompts[0]
    assert first.text == "a green backpack and a pig" and first.metadata["vqa_list"][0] == ["How many backpacks are in the image?", "one"]


def test_groups_concatenate_their_sets_in_order(data):
    prompts = PS.resolve("t2i-compbench")
    assert len(prompts) == sum(PS.PROMPT_SETS[n].size for n in PS.GROUPS["t2i-compbench"]) == 2400
    assert [p.metadata["category"] for p in prompts][::300][:3] == ["color", "shape", "texture"]


def test_a_missing_set_says_how_to_get_it(data):
    with pytest.raises(InputError) as err:
        PS.resolve("hpsv2/anime")
    msg = str(err.value)
    assert "\n" not in msg and "flowopd prompts download hpsv2/anime" in msg and "FLOWOPD_PROMPTS_HPSV2_ANIME" in msg
    with pytest.raises(InputError, match="did you mean geneval"):
        PS.resolve("genevl")


def test_one_set_can_point_at_your_own_file(data, tmp_path, monkeypatch):
    own = tmp_path / "anime.json"
    own.write_text(json.dumps(["A cat in a hat.", "Walter White as a medieval king.", {"prompt": "An owl.", "id": 7}]))
    monkeypatch.setenv("FLOWOPD_PROMPTS_HPSV2_ANIME", str(own))
    prompts = PS.resolve("hpsv2/anime")
    assert [p.text for p in prompts] == ["A cat in a hat.", "Walter White as a medieval king.", "An owl."]
    assert all(p.task == "preference" and p.metadata["style"] == "anime" for p in prompts) and prompts[2].metadata["id"] == 7


def test_malformed_files_are_named_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('["fine", 3]')
    with pytest.raises(InputError, match=r"bad.json: item 1 is not a non-empty prompt string"):
        PS.resolve(str(bad))
    bad.write_text('["fine",\n "broken]')
    with pytest.raises(InputError, match=r"bad.json:2: not valid JSON"):
        PS.resolve(str(bad))
    jl = tmp_path / "meta.jsonl"
    jl.write_text('{"prompt": "a photo of a cat", "tag": "single_object", "include": [{"class": "cat", "count": 1}]}\n{"prompt": 5}\n')
    with pytest.raises(InputError, match=r"meta.jsonl:2: each line needs a non-empty string \"prompt\""):
        PS.resolve(str(jl))


def test_download_from_a_local_server_lands_whole(tmp_path, monkeypatch):
    import dataclasses
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "photo.json").write_text(json.dumps(["a photo of a dog", "a photo of a bridge"]))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(tmp_path / "data"))
    for style, file in (("photo", "photo.json"), ("anime", "missing.json")):
        monkeypatch.setitem(PS.PROMPT_SETS, f"hpsv2/{style}", dataclasses.replace(PS.PROMPT_SETS[f"hpsv2/{style}"], url=f"{base}/{file}"))
    try:
        (path,) = PS.download("hpsv2/photo")
        assert path == tmp_path / "data" / "hpsv2" / "benchmark" / "photo.json"
        assert [p.text for p in PS.resolve("hpsv2/photo")] == ["a photo of a dog", "a photo of a bridge"]
        with pytest.raises(FlowOPDError, match=r"cannot download prompt set 'hpsv2/anime' .*404"):
            PS.download("hpsv2/anime")
        assert sorted(f.name for f in path.parent.iterdir()) == ["photo.json"]  # no partial file
    finally:
        server.shutdown()


def test_prompts_cli_lists_and_shows(data, run_cli):
    res = run_cli("prompts", "list", "--format", "json", env={"FLOWOPD_DATA_DIR": str(data)})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["sets"]}
    assert rows["geneval"]["present"] is True and rows["hpsv2/photo"]["present"] is False and len(rows) == 22
    assert rows["geneval2"]["present"] is True and rows["geneval2"]["size"] == 800
    dpg = rows["dpg-bench"]  # the prompt files are here, the question CSV is not
    assert dpg["present"] is False and dpg["size"] == 1065 and dpg["path"].endswith("dpg_bench/dpg_bench/dpg_bench.csv")
    assert rows["oneig"]["present"] is True and rows["oneig"]["size"] == 1120  # OneIG-Bench.csv is here
    res = run_cli("prompts", "show", "ocr", "-n", "2", "--format", "json", env={"FLOWOPD_DATA_DIR": str(data)})
    shown = json.loads(res.stdout)
    assert len(shown) == 2 and all(s["task"] == "text" and '"' in s["prompt"] for s in shown)


def test_the_hps_v2_benchmark_in_its_official_layout_feeds_the_suite(tmp_path, monkeypatch):
    """The HPS v2 benchmark as the hpsv2 package downloads it (zhwang/HPDv2 ``benchmark/<style>.json``: one JSON list of
    800 prompt strings a style): found under the data dir, 3200 jobs with their style, and the official score per style."""
    from flowopd.benchmarks.suites import chunked_mean_ci, get_suite

    root = tmp_path / "data"
    (root / "hpsv2" / "benchmark").mkdir(parents=True)
    for style in PS.HPS_STYLES:
        prompts = [f"{style} prompt number {i}, highly detailed" for i in range(800)]
        (root / "hpsv2" / "benchmark" / f"{style}.json").write_text(json.dumps(prompts, indent=4))
    monkeypatch.setenv("FLOWOPD_DATA_DIR", str(root))
    assert all(PS.PROMPT_SETS[f"hpsv2/{s}"].present() for s in PS.HPS_STYLES)
    prompts = PS.resolve("hpsv2")
    assert len(prompts) == 3200 and prompts[800].text == "concept-art prompt number 0, highly detailed"
    suite = get_suite("hpsv2")
    jobs = suite.jobs(limit=None, seed=0)
    assert len(jobs) == 3200 and {j.metadata["style"] for j in jobs} == set(PS.HPS_STYLES)
    assert len(suite.jobs(limit=2, seed=0)) == 4 * 2  # --limit counts prompts per style
    # the official benchmark score: per style, the mean of 10 chunk means of 80 prompts, of 100 x HPS
    raws = {s: [0.2 + 0.0001 * i + 0.01 * k for i in range(800)] for k, s in enumerate(PS.HPS_STYLES)}

    def raw(job):  # the score of prompt number i of its style's file
        return raws[job.metadata["style"]][int(job.prompt.split(",")[0].split()[-1])]

    records = [{"prompt": j.prompt, "metadata": j.metadata, "scores": {"hpsv2": {"raw": raw(j), "details": {}}}} for j in jobs]
    metrics = suite.aggregate(suite, records, ["hpsv2"])
    for s in PS.HPS_STYLES:
        official = sum(sum(100 * x for x in raws[s][80 * c : 80 * (c + 1)]) / 80 for c in range(10)) / 10
        assert metrics[s]["mean"] == pytest.approx(official) and metrics[s]["n"] == 800
    assert metrics["average"]["mean"] == pytest.approx(sum(metrics[s]["mean"] for s in PS.HPS_STYLES) / 4)
    assert chunked_mean_ci([100 * x for x in raws["photo"]])["mean"] == pytest.approx(metrics["photo"]["mean"])
