"""The SD3.5-Medium recipes (configs/sd35m), the accelerate launch configs, and `flowopd train ... --dry-run`.

Every recipe loads through the loader `flowopd train` uses, carries the paper's
values (SPEC sections 4-9), and passes the trainer's batch arithmetic on the
paper's 32 GPUs. The dry run prints the plan without loading a model.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SD35M = REPO / "configs" / "sd35m"
ACCEL = REPO / "configs" / "accelerate"

TEACHERS = ["teacher-geneval", "teacher-ocr", "teacher-pickscore", "teacher-deqa"]
MIXES = ["mix-weighted", "mix-alternate"]
OPDS = ["opd-merge", "opd-sft", "opd-no-mar"]
RECIPES = TEACHERS + MIXES + OPDS
NFTS = ["teacher-geneval-nft", "teacher-ocr-nft", "teacher-pickscore-nft"]  # DiffusionNFT's official values, not SPEC's
PROMPTS = {"compose": "geneval-train", "text": "ocr-train", "preference": "pickscore-train"}
HUB_ID = "sd3:stabilityai/stable-diffusion-3.5-medium"


def load(name: str):
    from flowopd.cli.main import _load_train_config  # the code path of `flowopd train ... --config sd35m/NAME`

    return _load_train_config(f"sd35m/{name}", {})


def test_the_recipe_set_is_complete_and_ships_as_package_data():
    import tomllib

    assert sorted(p.stem for p in SD35M.glob("*.yaml")) == sorted(RECIPES + NFTS)
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["flowopd.configs"]
    for path in [*SD35M.glob("*.yaml"), *ACCEL.glob("*.yaml")]:
        rel = str(path.relative_to(REPO / "configs"))
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_carries_the_spec_values(name):
    from flowopd.lora import SD3_LORA_TARGETS

    cfg = load(name)
    assert cfg.name == name
    assert cfg.model == HUB_ID
    assert cfg.resolution == 512
    s = cfg.sampler
    assert (s.steps, s.kind, s.noise_level, s.cfg, s.shift) == (10, "sde", 0.7, 4.5, 3.0)
    assert (s.window_size, s.timestep_fraction) == (0, 0.99)
    assert cfg.group_size == 24
    assert cfg.batch_size % 24 == 0
    assert (cfg.lora.rank, cfg.lora.alpha, tuple(cfg.lora.targets)) == (32, 64, SD3_LORA_TARGETS)
    o = cfg.optim
    assert (o.lr, o.weight_decay, o.grad_clip, o.ema_decay) == (3e-4, 1e-4, 1.0, 0.9)
    assert cfg.gradient_checkpointing is True and cfg.mixed_precision == "bf16"
    # training prompts: the Flow-GRPO training split of each task's dataset
    for task, w in cfg.tasks.items():
        assert w > 0 and cfg.prompts[task] == PROMPTS[task], (task, cfg.prompts)
    if cfg.opd is None:
        assert (cfg.grpo.clip_range, cfg.grpo.adv_clip, cfg.grpo.adv_std) == (1e-4, 5.0, "global")


def test_teacher_rewards_and_kl_betas():
    betas = {"teacher-geneval": 0.04, "teacher-ocr": 0.04, "teacher-pickscore": 0.01}
    rewards = {"teacher-geneval": {"geneval": 1.0}, "teacher-ocr": {"ocr": 1.0}, "teacher-pickscore": {"pickscore_v1": 1.0}}
    tasks = {"teacher-geneval": "compose", "teacher-ocr": "text", "teacher-pickscore": "preference"}
    for name, beta in betas.items():
        cfg = load(name)
        assert cfg.grpo.beta == beta, name  # SPEC section 4: 0.04 GenEval/OCR, 0.01 PickScore
        assert cfg.rewards == rewards[name] and list(cfg.tasks) == [tasks[name]]
    deqa = load("teacher-deqa")
    assert deqa.rewards == {"deqa": 0.4, "pickscore_v1": 0.6}  # DeQA:PickScore = 4:6
    assert set(deqa.tasks) == {"compose", "text", "preference"}  # "trained across the three datasets"


def test_mix_baselines():
    weighted, alternate = load("mix-weighted"), load("mix-alternate")
    assert weighted.task_sampling == "mixed" and weighted.rewards == {"geneval": 3, "ocr": 1, "pickscore_v1": 1}
    assert alternate.task_sampling == "alternate" and alternate.tasks == {"compose": 3, "text": 1, "preference": 1}
    assert alternate.task_rewards == {"compose": {"geneval": 1.0}, "text": {"ocr": 1.0}, "preference": {"pickscore_v1": 1.0}}


def test_opd_recipes_teachers_anchor_mar_and_cold_starts():
    expected = {
        "geneval": (["compose"], "runs/sd35m/teacher-geneval/lora"),
        "ocr": (["text"], "runs/sd35m/teacher-ocr/lora"),
        "pickscore": (["preference"], "runs/sd35m/teacher-pickscore/lora"),
    }
    for name in OPDS:
        opd = load(name).opd
        assert {t.name: (t.tasks, t.checkpoint) for t in opd.teachers} == expected
        assert (opd.objective, opd.routing, opd.kl_weighting) == ("kl", "sample", "exact")
    merge, sft, no_mar = (load(n).opd for n in OPDS)
    assert merge.mar_lambda == sft.mar_lambda == 0.02  # SPEC section 6 / 9
    assert merge.anchor == sft.anchor == "runs/sd35m/teacher-deqa/lora"
    assert no_mar.mar_lambda == 0 and no_mar.anchor is None
    assert (merge.cold_start.method, merge.cold_start.merge, merge.cold_start.from_lora) == ("merge", "cat", "runs/sd35m/coldstart-merge")
    assert (sft.cold_start.method, sft.cold_start.from_lora) == ("sft", "runs/sd35m/coldstart-sft")
    assert no_mar.cold_start == merge.cold_start
    # each recipe's header says how to make the cold start it reads
    assert "--method merge --out runs/sd35m/coldstart-merge" in (SD35M / "opd-merge.yaml").read_text()
    assert "--method sft --out runs/sd35m/coldstart-sft" in (SD35M / "opd-sft.yaml").read_text()


@pytest.mark.parametrize("name", RECIPES + NFTS)
def test_recipe_header_names_spec_and_its_launch_command(name):
    text = (SD35M / f"{name}.yaml").read_text()
    header = text[: text.index("\nname:")]
    assert all(line.startswith("#") for line in header.splitlines()), "the file starts with a comment block"
    assert "SPEC section" in header
    command = "train opd" if name.startswith("opd") else "train mix" if name.startswith("mix") else "train teacher"
    assert f"-m flowopd.cli.main {command} --config sd35m/{name}" in header
    for config in re.findall(r"--config_file (\S+)", header):
        assert (REPO / config).is_file(), config
    assert "not in SPEC" in text  # every value of our own choosing says so


@pytest.mark.parametrize("name", RECIPES)
def test_arithmetic_passes_on_32_gpus_and_the_plan_says_so(name):
    from flowopd.plan import train_plan
    from flowopd.plan_checks import check_arithmetic

    cfg = load(name)
    check_arithmetic(cfg, 32)
    plan = train_plan(cfg, 32, "opd" if cfg.opd else "teacher", f"sd35m/{name}")
    assert plan["arithmetic"] == {"ok": True, "error": None}
    assert (plan["processes"], plan["batch_per_gpu"], plan["prompts_per_step"]) == (32, 36, 48)
    assert plan["samples_per_update_per_gpu"] == 18 and plan["sampler"]["trained_steps"] == 9
    assert 15 < plan["memory"]["total_gib"] < 60  # an estimate: it must at least fit an 80 GB GPU


@pytest.mark.parametrize("name", NFTS)
def test_nft_recipes_carry_the_official_values_and_plan_on_8_and_32_gpus(name):
    """NVlabs/DiffusionNFT config/nft.py: CFG-free 10-step rollouts, 9 times per sample, beta 1 (OCR 0.1), decay type 1
    (OCR 2), KL 1e-4, 48 prompts x 24 per epoch, one optimizer step per epoch (OCR two)."""
    from flowopd.plan import train_plan

    cfg = load(name)
    ocr = name == "teacher-ocr-nft"
    assert cfg.objective == "nft" and cfg.model == HUB_ID and cfg.resolution == 512
    assert (cfg.sampler.steps, cfg.sampler.cfg, cfg.sampler.shift, cfg.sampler.timestep_fraction) == (10, 1.0, 3.0, 0.99)
    n = cfg.nft
    assert (n.beta, n.old_policy) == ((0.1, "slow") if ocr else (1.0, "default"))
    assert (n.adv_clip, n.adv_std, n.weighting, n.kl) == (5.0, "global", "adaptive", 1e-4)
    assert (cfg.batch_size, cfg.group_size, cfg.micro_batch, cfg.updates_per_rollout) == (1152, 24, 9, 2 if ocr else 1)
    assert (cfg.optim.lr, cfg.optim.ema_decay, cfg.lora.rank, cfg.lora.alpha) == (3e-4, 0.9, 32, 64)
    for gpus in (8, 32):
        plan = train_plan(cfg, gpus, "teacher", f"sd35m/{name}")
        assert plan["arithmetic"] == {"ok": True, "error": None} and plan["batch_per_gpu"] == 1152 // gpus
        assert plan["nft"]["timesteps_per_sample"] == 9
        assert 15 < plan["memory"]["total_gib"] < 60
        assert any("old policy" in t["what"] for t in plan["memory"]["terms"])


def _main(capsys, monkeypatch, *argv):
    """`flowopd ARGV` in this process; no model may load."""
    import flowopd.models
    from flowopd.cli.main import main

    def refuse(*a, **k):
        raise AssertionError("a dry run loaded a model")

    monkeypatch.setattr(flowopd.models, "load_backbone", refuse)
    monkeypatch.setenv("COLUMNS", "200")
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_of_opd_merge_on_32_processes(capsys, monkeypatch):
    rc, out, err = _main(capsys, monkeypatch, "train", "opd", "--config", "sd35m/opd-merge", "--dry-run", "--processes", "32")
    assert rc == 0, err
    assert re.search(r"^\s+processes\s+32\b", out, re.M)
    assert re.search(r"^\s+batch per GPU\s+36$", out, re.M)
    assert re.search(r"^\s+prompts \(groups\)/step\s+48$", out, re.M)
    assert re.search(r"^\s+arithmetic\s+ok for 32 process", out, re.M)
    assert "student rank 96" in out and "routing" in out and "lambda 0.02" in out
    assert re.search(r"memory per GPU\s+~\d+\.\d GiB", out) and "2.47e9" in out and "T5-XXL" in out
    assert "missing" in out  # no weights here: listed, not raised


def test_dry_run_with_a_bad_process_count_fails_in_one_line_naming_the_fix(capsys, monkeypatch):
    rc, out, err = _main(capsys, monkeypatch, "train", "opd", "--config", "sd35m/opd-merge", "--dry-run", "--processes", "7")
    assert rc == 1
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "batch_size 1152 does not split over 7 processes; use a multiple of 7" in lines[0]
    assert "8, 9, 12, 16" in lines[0]  # ... or the process counts that fit
    assert "FAILED" in out  # the plan is still printed


def test_dry_run_reads_world_size_and_prints_json(capsys, monkeypatch):
    import json

    monkeypatch.setenv("WORLD_SIZE", "8")
    rc, out, err = _main(capsys, monkeypatch, "train", "teacher", "--config", "sd35m/teacher-geneval", "--dry-run", "--format", "json")
    assert rc == 0, err
    plan = json.loads(out)
    assert (plan["processes"], plan["processes_from"], plan["batch_per_gpu"]) == (8, "$WORLD_SIZE", 144)
    assert plan["inputs"]["ok"] is False and plan["inputs"]["error"]  # check_inputs' verdict, reported not raised


def test_dry_run_of_a_cold_start_and_of_the_mini_world(capsys, monkeypatch):
    rc, out, err = _main(capsys, monkeypatch, "train", "coldstart", "--config", "sd35m/opd-sft", "--method", "sft", "--dry-run")
    assert rc == 0, err
    assert re.search(r"^\s+processes\s+1\b", out, re.M) and "sft: each teacher draws 256 prompts" in out
    rc, out, err = _main(capsys, monkeypatch, "train", "opd", "--dry-run")  # the shipped mini recipe
    assert rc == 0, err
    assert "negligible" in out and re.search(r"^\s+inputs\s+ok$", out, re.M)


def test_processes_without_dry_run_is_refused(capsys, monkeypatch):
    rc, _, err = _main(capsys, monkeypatch, "train", "mix", "--config", "sd35m/mix-weighted", "--processes", "4")
    assert rc == 1 and "--processes only plans a --dry-run" in err


# ----------------------------------------------------------------------------- accelerate configs


def _launch_args(path: Path, *extra: str):
    """What `accelerate launch --config_file PATH EXTRA script` resolves to (accelerate's own parser and validation)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), *extra, "script.py"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, _, _ = _validate_launch_command(args)
    return args


@pytest.mark.parametrize(
    "name, kind, processes, machines",
    [("1gpu", "NO", 1, 1), ("8gpu", "MULTI_GPU", 8, 1), ("4x8gpu", "MULTI_GPU", 32, 4), ("fsdp-8gpu", "FSDP", 8, 1)],
)
def test_accelerate_config_loads_with_accelerates_classes(name, kind, processes, machines):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = ACCEL / f"{name}.yaml"
    cfg = load_config_from_file(str(path))  # unknown keys raise here
    assert isinstance(cfg, ClusterConfig)
    assert (cfg.distributed_type.value, cfg.num_processes, cfg.num_machines, cfg.mixed_precision) == (kind, processes, machines, "bf16")
    args = _launch_args(path)
    assert args.num_processes == processes


def test_multi_node_placeholders_are_overridden_on_the_command_line():
    path = ACCEL / "4x8gpu.yaml"
    args = _launch_args(path)
    assert (args.machine_rank, args.main_process_ip) == (0, "master.invalid")
    args = _launch_args(path, "--machine_rank", "3", "--main_process_ip", "10.1.2.3", "--main_process_port", "29600")
    assert (args.machine_rank, args.main_process_ip, args.main_process_port, args.num_machines) == (3, "10.1.2.3", 29600, 4)


def test_fsdp_config_builds_accelerates_plugin_and_names_a_block_of_the_sd3_transformer(monkeypatch):
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name
    from accelerate.utils.launch import prepare_multi_gpu_env
    from diffusers import SD3Transformer2DModel

    args = _launch_args(ACCEL / "fsdp-8gpu.yaml")
    for key, value in prepare_multi_gpu_env(args).items():  # the environment `accelerate launch` gives each process
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["JointTransformerBlock"]
    with torch.device("meta"):
        tiny = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=4,
        )  # fmt: skip
    assert get_module_class_from_name(tiny, "JointTransformerBlock") is not None
    assert "JointTransformerBlock" in SD3Transformer2DModel._no_split_modules


def test_train_model_option_replaces_the_recipes_base(capsys, monkeypatch, tiny_model_dir):
    rc, out, err = _main(
        capsys, monkeypatch, "train", "teacher", "--config", "mini/teacher-text", "--model", str(tiny_model_dir), "--dry-run"
    )
    assert rc == 0, err
    assert re.search(rf"^\s+model\s+{re.escape(str(tiny_model_dir))}\s", out, re.M)


def test_teacher_objective_option_picks_the_nft_recipe_and_refuses_a_mismatch(capsys, monkeypatch):
    rc, out, err = _main(capsys, monkeypatch, "train", "teacher", "--reward", "mini_ocr", "--objective", "nft", "--dry-run")
    assert rc == 0, err
    assert "--config mini/teacher-text-nft" in out and re.search(r"^\s+DiffusionNFT\s+beta 0.1,", out, re.M)
    assert "deterministic ODE of the old policy, CFG 1.0" in out
    rc, out, err = _main(capsys, monkeypatch, "train", "teacher", "--config", "sd35m/teacher-geneval", "--objective", "nft", "--dry-run")
    assert rc != 0 and "recipe sd35m/teacher-geneval trains by grpo, not nft; pass a recipe for nft (e.g. mini/teacher-compose-nft)" in err
