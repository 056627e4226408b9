"""The CLI end to end in subprocesses: outputs, one-line errors, non-zero exits, nothing half-written."""

import json
import os
import subprocess
import sys

import pytest


def one_line_error(res, *needles):
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_help_imports_no_heavy_modules():
    code = (
        "import sys\n"
        "from flowopd.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for group in ("train", "eval", "report", "rewards", "weights", "sample", "mini"):
        assert group in out


def test_sample_writes_an_upscaled_png(tiny_model_dir, tmp_path, run_cli):
    from PIL import Image

    out = tmp_path / "img.png"
    res = run_cli("sample", "--prompt", "two red squares", "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert Image.open(out).size == (256, 256)
    res = run_cli(
        "sample",
        "-p",
        "a photo of a zebra",
        "-m",
        str(tiny_model_dir),
        "-o",
        str(tmp_path / "grid.png"),
        "--steps",
        "1",
        "--n",
        "4",
        "--scale",
        "2",
    )
    assert res.returncode == 0 and "zebra" in res.stderr  # unknown words are warned about
    assert Image.open(tmp_path / "grid.png").size == ((4 * 33 + 1) * 2, 34 * 2)


def test_sample_from_a_prompt_file(tiny_model_dir, tmp_path, run_cli):
    prompts = tmp_path / "p.txt"
    prompts.write_text('a photo of a circle\nthe text "5"\n')
    res = run_cli("sample", "--prompts", str(prompts), "-m", str(tiny_model_dir), "-o", str(tmp_path / "out"), "--steps", "1")
    assert res.returncode == 0, res.stderr
    meta = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert [m["prompt"] for m in meta] == ["a photo of a circle", 'the text "5"']
    assert all((tmp_path / "out" / m["file"]).is_file() for m in meta)


def test_malformed_prompt_file_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, run_cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a photo of a circle"}\n{"prompt": \n')
    res = run_cli("sample", "--prompts", str(bad), "-m", str(tiny_model_dir), "-o", str(tmp_path / "out"))
    one_line_error(res, "bad.jsonl:2", "not valid JSON")
    assert not (tmp_path / "out").exists()


def test_bad_output_name_is_rejected_before_any_work(tmp_path, run_cli):
    res = run_cli("sample", "--prompt", "a photo of a circle", "--out", str(tmp_path / "img.jpg"))
    one_line_error(res, "must end in .png")
    assert not (tmp_path / "img.jpg").exists()


def test_rewards_score_on_a_ground_truth_render(tmp_path, run_cli):
    img = tmp_path / "gt.png"
    assert run_cli("mini", "render", "--prompt", "a photo of three blue triangles", "--out", str(img), "--scale", "1").returncode == 0
    res = run_cli("rewards", "score", "mini_geneval", str(img), "--prompt", "a photo of three blue triangles", "--format", "json")
    assert res.returncode == 0, res.stderr
    (rec,) = json.loads(res.stdout)
    assert rec["raw"] == 1.0 and rec["normalized"] == 1.0 and rec["details"]["correct"] is True
    assert len(rec["details"]["detections"]) == 3
    text = tmp_path / "t.png"
    run_cli("mini", "render", "--prompt", 'the text "907"', "--out", str(text), "--scale", "1", "--ideal")
    res = run_cli("rewards", "score", "mini_ocr", str(text), "--prompt", 'the text "901"', "--format", "json")
    (rec,) = json.loads(res.stdout)
    assert rec["raw"] == pytest.approx(2 / 3) and rec["details"]["read"] == "907"
    res = run_cli("rewards", "score", "mini_quality", str(text), "--prompt", "x")
    assert res.returncode == 0 and "mini_quality" in res.stdout


def test_rewards_score_bad_inputs(tmp_path, run_cli):
    one_line_error(run_cli("rewards", "score", "pickscor", "x.png", "--prompt", "a"), "unknown reward 'pickscor'")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    one_line_error(run_cli("rewards", "score", "mini_quality", str(junk), "--prompt", "a"), "cannot read image", "PNG or JPEG")
    one_line_error(run_cli("rewards", "score", "mini_quality", str(tmp_path / "nope.png"), "--prompt", "a"), "does not exist")
    one_line_error(
        run_cli("rewards", "score", "mini_quality", str(junk), str(junk), "--prompt", "a", "--prompt", "b", "--prompt", "c"), "one --prompt"
    )
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    one_line_error(
        run_cli("rewards", "score", "mini_geneval", str(tmp_path / "ok.png"), "--prompt", "an astronaut on a horse"),
        "not a mini-world prompt",
    )
    one_line_error(
        run_cli("rewards", "score", "mini_geneval", str(tmp_path / "ok.png"), "--prompt", "a", "--metadata", "{bad"),
        "--metadata is not valid JSON",
    )


def test_debug_shows_the_traceback(tmp_path, run_cli):
    res = run_cli("--debug", "rewards", "score", "nope_reward", "x.png", "--prompt", "a")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_bad_config_values_name_the_key_and_leave_nothing(tmp_path, run_cli):
    cfg = tmp_path / "bad.yaml"
    out = tmp_path / "model"
    cfg.write_text("steps: 0\n")
    line = one_line_error(
        run_cli("mini", "pretrain", "--config", str(cfg), "--out", str(out)), "bad config value steps=0", "greater than or equal to 1"
    )
    assert "bad.yaml" in line
    cfg.write_text("stepz: 10\n")
    one_line_error(
        run_cli("mini", "pretrain", "--config", str(cfg), "--out", str(out)), "unknown config key 'stepz'", "allowed keys: steps"
    )
    cfg.write_text("steps: [1\n")
    one_line_error(run_cli("mini", "pretrain", "--config", str(cfg), "--out", str(out)), "not valid YAML")
    one_line_error(run_cli("mini", "pretrain", "--lr", "-1", "--out", str(out)), "bad config value lr=-1")
    assert not out.exists()


def test_mini_pretrain_cli_writes_model_and_config(tmp_path, run_cli):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("steps: 2\nbatch_size: 4\nwarmup: 1\n")
    res = run_cli("mini", "pretrain", "--config", str(cfg), "--out", str(tmp_path / "m"), "--seed", "5")
    assert res.returncode == 0, res.stderr
    import yaml

    saved = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert saved["steps"] == 2 and saved["seed"] == 5 and saved["batch_size"] == 4
    assert (tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def test_eval_and_report(tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "eval"
    res = run_cli("eval", "--suite", "mini", "--model", str(tiny_model_dir), "--out", str(out), "--limit", "1", "--steps", "1")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["suites"]["mini"]["headline"]) == {"compose", "text", "preference", "quality"}
    m = summary["metrics"]["mini/compose/geneval_overall"]
    assert m["n"] == 6 and m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert summary["run"]["config"]["steps"] == 1 and summary["run"]["versions"]["diffusers"]
    lines = (out / "mini" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == summary["suites"]["mini"]["n_images"] == 9
    assert all((out / json.loads(ln)["image"]).is_file() for ln in lines)
    assert (out / "report.md").is_file() and (out / "report.html").is_file()  # eval writes its own report
    rep = run_cli("report", str(out))
    assert rep.returncode == 0 and tiny_model_dir.name in rep.stdout
    one_line_error(run_cli("eval", "--suite", "minii"), "unknown suite 'minii'", "did you mean mini")
    one_line_error(run_cli("report", str(tmp_path / "none.json")), "does not exist")


def test_weights_and_prompts(tmp_path, run_cli):
    res = run_cli("weights", "list", "--format", "json")
    assert res.returncode == 0
    (row,) = [r for r in json.loads(res.stdout) if r["name"] == "mini-base"]
    assert {"present", "path", "sha256", "how_to_get"} <= set(row)
    res = run_cli("mini", "prompts", "--task", "compose", "--n", "5", "--out", str(tmp_path / "p.jsonl"))
    assert res.returncode == 0
    recs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and all(r["task"] == "compose" and "include" in r for r in recs)
    from flowopd.benchmarks.prompts import load_prompt_file

    assert len(load_prompt_file(tmp_path / "p.jsonl")) == 5  # our own format loads back
    one_line_error(run_cli("mini", "prompts", "--task", "painting"), "unknown mini task 'painting'")


def test_option_errors_are_one_line_with_a_pointer_to_help(run_cli):
    line = one_line_error(run_cli("eval", "--limit", "0"), "--limit", "flowopd eval --help")
    assert "greater than or equal to 1" in line
    one_line_error(run_cli("sample", "--bogus"), "No such option: --bogus")
    one_line_error(run_cli("rewards", "score", "mini_ocr"), "Missing argument")
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("flowopd ")


def test_outputs_never_replace_a_users_folder(tiny_model_dir, tmp_path, run_cli):
    """Output folders are replaced whole, so a folder that is not an earlier output of the same command is refused."""
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"irreplaceable")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a circle\na photo of a square\n")
    for args in (
        ("sample", "--prompts", str(prompts), "-m", str(tiny_model_dir), "-o", str(precious), "--steps", "1"),
        ("eval", "--suite", "mini", "-m", str(tiny_model_dir), "-o", str(precious), "--limit", "1", "--steps", "1"),
        ("mini", "pretrain", "--steps", "1", "--batch-size", "2", "-o", str(precious)),
    ):
        one_line_error(run_cli(*args), "holds other files")
        assert [p.name for p in precious.iterdir()] == ["holiday.jpg"]
    out = tmp_path / "samples"  # an earlier output of the same command is fine to replace
    assert run_cli("sample", "--prompts", str(prompts), "-m", str(tiny_model_dir), "-o", str(out), "--steps", "1").returncode == 0
    assert run_cli("sample", "--prompts", str(prompts), "-m", str(tiny_model_dir), "-o", str(out), "--steps", "1").returncode == 0


def _tiny_recipe(tmp_path, model, **over):
    values = {
        "name": "tiny-teacher",
        "model": str(model),
        "steps": 2,
        "tasks": {"text": 1.0},
        "rewards": {"mini_ocr": 1.0},
        "batch_size": 8,
        "group_size": 4,
        "sampler": {"steps": 3, "cfg": 2.0, "shift": 1.0, "kind": "cps", "noise_level": 0.8},
        "lora": {"rank": 4, "alpha": 8},
        "checkpoint_every": 1,
        "trackers": [],
        **over,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def test_train_teacher_resume_and_eval_the_lora(tiny_policy_dir, tmp_path, run_cli):
    recipe = _tiny_recipe(tmp_path, tiny_policy_dir, keep_checkpoints=10)
    out = tmp_path / "run"
    res = run_cli("train", "teacher", "--config", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"LoRA: {out / 'lora'}" in " ".join(res.stdout.split())
    res = run_cli("train", "teacher", "--config", str(recipe), "--out", str(out), "--steps", "4", "--resume", "--checkpoint-every", "5")
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002", "step-000004"]  # 3 skipped
    res = run_cli("eval", "--suite", "mini", "--model", str(out / "lora"), "--limit", "1", "--steps", "2", "--out", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["run"]["config"]["model"] == str(out / "lora")


def test_train_bad_input_is_one_line_before_any_work(tiny_policy_dir, tmp_path, run_cli):
    out = tmp_path / "run"
    one_line_error(run_cli("train", "teacher", "--reward", "mini_genevl", "--out", str(out)), "did you mean 'mini_geneval'")
    one_line_error(run_cli("train", "teacher", "--out", str(out)), "pass --reward NAME")
    one_line_error(run_cli("train", "mix", "--config", "mini/nope", "--out", str(out)), "shipped recipes: mini/mix-alternate")
    bad_group = _tiny_recipe(tmp_path, tiny_policy_dir, group_size=3)
    one_line_error(run_cli("train", "teacher", "--config", str(bad_group), "--out", str(out)), "group_size 3 does not divide batch_size 8")
    bad_window = _tiny_recipe(tmp_path, tiny_policy_dir, sampler={"steps": 3, "window_size": 4})
    one_line_error(run_cli("train", "teacher", "--config", str(bad_window), "--out", str(out)), "outside the 3-step schedule")
    assert not out.exists()


def _ctrl_c_on() -> None:
    """In the child: SIGINT back to its default, as a terminal's Ctrl-C finds it (a suite run under nohup or in a
    background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when(proc, ready, timeout: float = 300) -> tuple[int, str]:
    """SIGINT ``proc`` once ``ready()`` holds; its exit code and stderr."""
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_an_interrupted_eval_or_training_says_what_was_kept_and_how_to_continue(tmp_path):
    """Issue 15 #4: SIGINT used to exit 130 with nothing said."""
    import subprocess

    env = {**os.environ, "COLUMNS": "300"}
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "flowopd.cli.main", "eval", "--suite", "mini", "--limit", "48", "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_on)
    rc, err = _interrupt_when(proc, lambda: len(list((out / "images").glob("*.json"))) >= 2)
    assert rc == 130 and "interrupted: evaluation stopped" in err and "finished images kept" in err, err
    assert f"continue with: flowopd eval --suite mini --limit 48 --out {out} --no-report" in err
    import yaml

    from flowopd.train_config import recipe_path

    recipe = yaml.safe_load(recipe_path("mini/teacher-text").read_text())
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({**recipe, "batch_size": 8, "group_size": 4, "micro_batch": 8}))
    run = tmp_path / "t"
    cmd = [sys.executable, "-m", "flowopd.cli.main", "train", "teacher", "--config", str(tmp_path / "small.yaml"), "--steps", "9"]
    cmd += ["--checkpoint-every", "1", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_on)
    rc, err = _interrupt_when(proc, lambda: (run / "checkpoints" / "step-000001" / "trainer_state.json").is_file())
    assert rc == 130 and "interrupted: training stopped during step" in err and "kept checkpoint" in err, err
    assert err.strip().endswith(f"--out {run} --resume"), err


def test_a_huge_mini_limit_is_capped_not_hung():
    """Issue 15 #3: --limit 100000000 built a hundred million prompts before the first image."""
    from flowopd.mini.suite import MAX_PROMPTS_PER_TASK, suite_prompts

    items = suite_prompts(10**8)
    assert len(items) == (len(world_tasks := ("compose",) * 6 + ("text", "preference", "quality"))) * MAX_PROMPTS_PER_TASK
    assert {t for t, _ in items} == set(world_tasks)


def test_user_text_in_brackets_or_colons_is_printed_as_written(tmp_path, run_cli):
    """Issue 15 #8: rich markup ate `[test]`, `[bold]`, `[geneval-mmdet]`, `[a, b]`, and `:x:` became an emoji."""
    odd = tmp_path / "my[test].txt"
    odd.write_text("not an image")
    assert f"cannot read image {odd}" in run_cli("rewards", "score", "mini_ocr", str(odd), "--prompt", "x").stderr
    assert "model 'runs/[bold]x' is neither" in run_cli("eval", "--suite", "mini", "--model", "runs/[bold]x").stderr
    assert "model ':x:' is neither" in run_cli("eval", "--suite", "mini", "--model", ":x:").stderr
    assert "[a, b, ...]" in run_cli("rewards", "agreement", "--help").stdout
    listing = run_cli("rewards", "list", env={"COLUMNS": "400"}).stdout
    assert "pip install 'flowopd[geneval-mmdet]'" in listing or "needs the Python module 'mmdet'" not in listing


def test_bare_errors_are_one_line_that_names_the_fix(tmp_path, run_cli):
    """Issue 15: each of these answered with a bare `ExcType: message` (or computed for minutes first)."""
    import importlib.util

    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(img)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for args in (
        ("sample", "--prompt", "a photo of a circle", "--out", str(a_file / "x.png")),
        ("eval", "--suite", "mini", "--limit", "1", "--out", str(a_file / "ev")),
        ("train", "teacher", "--reward", "mini_ocr", "--steps", "1", "--out", str(a_file / "t")),
    ):
        one_line_error(run_cli(*args), f"cannot write in {a_file}: {a_file} is a file; pass an output path in a writable folder")
    bad_cache = tmp_path / "bad.sqlite"
    bad_cache.write_text("not a database")
    res = run_cli("eval", "--suite", "mini", "--limit", "1", "--cache", str(bad_cache), "--out", str(tmp_path / "ev"), "--no-report")
    one_line_error(res, f"score cache {bad_cache} cannot be used (file is not a database); delete it, or pass --cache")
    res = run_cli("rewards", "score", "unifiedreward", str(img), "--prompt", "a", env={"FLOWOPD_UNIFIEDREWARD_URL": "not-a-url"})
    one_line_error(res, "$FLOWOPD_UNIFIEDREWARD_URL is 'not-a-url', not an http(s) URL; set it like http://127.0.0.1:8000/v1")
    res = run_cli("eval", "--suite", "mini", "--limit", "1", "--out", str(tmp_path / "ev2"), env={"WORLD_SIZE": "2"})
    one_line_error(res, "WORLD_SIZE=2 is set but no launcher started this process (no MASTER_ADDR); run `accelerate launch")
    if importlib.util.find_spec("mmdet") is None:
        one_line_error(
            run_cli("rewards", "score", "geneval", str(img), "--prompt", "a photo of a cat"), "pip install 'flowopd[geneval-mmdet]'"
        )
    if importlib.util.find_spec("paddleocr") is None:  # the package is named, not its weights
        res = run_cli("rewards", "score", "ocr@paddle", str(img), "--prompt", 'the text "a"')
        one_line_error(res, "ocr@paddle needs the Python module 'paddleocr': pip install 'flowopd[paddle]'")
    res = run_cli("rewards", "score", "mini_ocr", str(tmp_path / "missing.png"), "--prompt", "a", "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr  # --debug after the subcommand works
