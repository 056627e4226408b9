"""OPD on the one trainer: adapters on one base, routing, the objectives and MAR, resume, bad input (SPEC section 6)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from flowopd.errors import FlowOPDError
from flowopd.lora import add_lora, load_lora, use_adapter
from flowopd.models import load_backbone
from flowopd.objectives.opd import leave_one_out, reward_to_go, step_advantages, task_balance_weights
from flowopd.plan_checks import check_plan
from flowopd.sampling import guided_velocity
from flowopd.teachers import MINI_TEACHERS, Router, TeacherSpec
from flowopd.train_config import TrainConfig
from flowopd.trainer import Trainer


def opd_config(model, teachers, **over) -> TrainConfig:
    opd = {
        "teachers": [{"name": t, "tasks": [t], "reward": "x", "checkpoint": str(teachers[t])} for t in ("compose", "text")],
        "anchor": str(teachers["quality"]),
        "mar_lambda": 0.5,
        "cold_start": {"method": "merge"},
        **over.pop("opd", {}),
    }
    values = dict(
        name="tiny-opd",
        model=str(model),
        steps=2,
        tasks={"compose": 1.0, "text": 1.0},
        batch_size=8,
        group_size=2,
        micro_batch=3,  # not a divisor of the teacher groups: batching per teacher must still line up
        sampler={"steps": 4, "cfg": 2.0, "shift": 1.0, "kind": "sde", "noise_level": 0.7, "window_size": 2, "window_start_max": 1},
        lora={"rank": 4, "alpha": 8},
        optim={"lr": 1e-2},
        checkpoint_every=1,
        trackers=[],
        opd=opd,
    )
    values.update(over)
    return TrainConfig.model_validate(values)


def test_use_adapter_switches_to_exactly_that_adapter_and_keeps_trainable_flags(tiny_policy_dir, tiny_teachers):
    backbone = load_backbone(str(tiny_policy_dir))
    tr = backbone.transformer
    backbone.requires_grad_(False)
    add_lora(tr, 4, 8)
    load_lora(tr, tiny_teachers["text"], "teacher_text")
    assert tr.active_adapters() == ["default"]  # loading a teacher leaves the student active
    flags = {n: p.requires_grad for n, p in tr.named_parameters()}
    x = torch.randn(2, *backbone.latent_shape)
    cond = backbone.encode_prompts(["the text 42", "a red circle"])
    sigma = torch.tensor(0.6)
    with use_adapter(tr, "teacher_text"), torch.no_grad():
        v_teacher = backbone.velocity(x, sigma, cond)
    with use_adapter(tr, None), torch.no_grad():
        v_base = backbone.velocity(x, sigma, cond)
    assert {n: p.requires_grad for n, p in tr.named_parameters()} == flags and tr.active_adapters() == ["default"]
    with torch.no_grad():
        alone = load_backbone(str(tiny_teachers["text"])).velocity(x, sigma, cond)
        plain = load_backbone(str(tiny_policy_dir)).velocity(x, sigma, cond)
    assert torch.allclose(v_teacher, alone, atol=1e-5) and torch.allclose(v_base, plain, atol=1e-6)  # alone: fused (rounding)
    assert not torch.allclose(v_teacher, v_base, atol=1e-3)


def test_router_maps_tasks_to_teachers_and_groups_samples():
    router = Router(MINI_TEACHERS, "sample")
    assert router.groups(["text", "compose", "text", "quality"]) == {"text": [0, 2], "compose": [1], "quality": [3]}
    with pytest.raises(FlowOPDError, match=r"task\(s\) \['extra'\] have no teacher"):
        router.check(["text", "extra"])
    twice = [
        TeacherSpec(name="a", tasks=["text"], reward="x", checkpoint="x"),
        TeacherSpec(name="b", tasks=["text"], reward="x", checkpoint="x"),
    ]
    with pytest.raises(FlowOPDError, match="served by two teachers"):
        Router(twice)


def test_reward_to_go_and_the_leave_one_out_baseline():
    kl = torch.tensor([[1.0, 2.0, 4.0], [0.5, 0.5, 0.5]])
    assert torch.equal(reward_to_go(kl), -torch.tensor([[6.0, 4.0, 0.0], [1.0, 0.5, 0.0]]))
    values = torch.tensor([[1.0], [2.0], [6.0], [5.0]])
    out = leave_one_out(values, torch.tensor([0, 0, 0, 1]))
    assert torch.allclose(out.flatten(), torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 5.0]))
    assert torch.equal(step_advantages("paper", kl, torch.arange(2)), -kl)
    assert torch.equal(step_advantages("kl", kl, torch.arange(2)), torch.zeros_like(kl))


def test_task_balance_gives_every_task_the_same_share_of_the_kl():
    kl = torch.tensor([1.0, 3.0, 0.1, 0.3, 0.2])
    tasks = torch.tensor([2, 2, 0, 0, 1])
    assert torch.equal(task_balance_weights(kl, tasks, "none"), torch.ones(5))
    w = task_balance_weights(kl, tasks, "kl")
    # task means 2.0, 0.2, 0.2; their mean 0.8: weights 0.8/2 = 0.4 and 0.8/0.2 = 4
    assert torch.allclose(w, torch.tensor([0.4, 0.4, 4.0, 4.0, 4.0]))
    weighted = kl * w
    assert all(torch.isclose(weighted[tasks == t].mean(), torch.tensor(0.8)) for t in (0, 1, 2))


def test_a_task_balanced_run_weights_each_sample_by_its_task(tiny_policy_dir, tiny_teachers, tmp_path):
    trainer = Trainer(opd_config(tiny_policy_dir, tiny_teachers, opd={"task_balance": "kl"}), tmp_path / "run")
    batch = trainer._collect()
    trainer.objective.signal(batch)
    tasks = [r.task for r in batch.records]
    kl = trainer.objective.last_batch["kl"].sum(1)
    weighted = kl * batch.signal["task_weight"]
    means = [weighted[[i for i, t in enumerate(tasks) if t == name]].mean() for name in ("compose", "text")]
    assert torch.isclose(means[0], means[1], rtol=1e-5)
    assert not torch.allclose(batch.signal["task_weight"], torch.ones(len(tasks)))  # the two teachers sit at different KLs


def test_each_sample_gets_its_routed_teacher_and_the_anchor_exactly(tiny_policy_dir, tiny_teachers, tmp_path):
    trainer = Trainer(opd_config(tiny_policy_dir, tiny_teachers), tmp_path / "run")
    batch = trainer._collect()
    trainer.objective.signal(batch)
    tasks = [r.task for r in batch.records]
    assert set(tasks) == {"compose", "text"}
    sig = batch.plan.sigmas
    with torch.no_grad():
        for name in ("compose", "text", "quality"):
            alone = load_backbone(str(tiny_teachers[name]))
            rows = list(range(len(tasks))) if name == "quality" else [i for i, t in enumerate(tasks) if t == name]
            target = batch.signal["v_anchor" if name == "quality" else "v_teacher"]
            for k, i_step in enumerate(batch.plan.trained):
                v = guided_velocity(alone, batch.traj.states[rows, k], sig[i_step], batch.cond[rows], batch.uncond[rows], 2.0)
                assert torch.allclose(target[rows, k], v, atol=1e-5), (name, k)
    # the student starts from the merge cold start: its rollout velocity is the merged LoRA's
    assert (tmp_path / "run" / "coldstart" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("objective", ["kl", "kl_pg", "paper"])
def test_an_opd_run_logs_per_task_kl_and_mar_and_saves_a_diffusers_lora(tiny_policy_dir, tiny_teachers, tmp_path, objective):
    out = tmp_path / "run"
    lora = Trainer(opd_config(tiny_policy_dir, tiny_teachers, opd={"objective": objective}), out).train()
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 2
    for row in logs:
        assert {"kl/compose", "kl/text", "kl", "mar", "clip_frac", "loss"} <= set(row)
        assert row["mar"] > 0 and row["kl"] > 0
    info = json.loads((lora / "lora_info.json").read_text())
    assert info["objective"] == objective and set(info["teachers"]) == {"compose", "text"} and info["cold_start"] == "merge"
    weights = load_file(lora / "pytorch_lora_weights.safetensors")
    assert all(k.startswith("transformer.") for k in weights)
    assert weights["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].shape[0] == 8  # cat merge of two rank-4 teachers
    load_backbone(str(lora))  # loads back through the public path


def test_the_kl_objective_lowers_the_kl_to_the_teachers(tiny_policy_dir, tiny_teachers, tmp_path):
    cfg = opd_config(
        tiny_policy_dir,
        tiny_teachers,
        steps=6,
        opd={"mar_lambda": 0.0, "cold_start": {"method": "none"}},
        optim={"lr": 3e-3, "ema_decay": 0.0},
    )
    trainer = Trainer(cfg, tmp_path / "run")

    def probe() -> float:
        """The trajectory KL of step 0's prompts, seeds and window under the current student (a fixed yardstick)."""
        step, trainer.step = trainer.step, 0
        batch = trainer._collect()
        trainer.objective.signal(batch)
        trainer.step = step
        return float(trainer.objective.last_batch["kl"].sum(1).mean())

    before = probe()
    trainer.train()
    after = probe()
    assert after < 0.5 * before, (before, after)  # a fresh LoRA starts at the base; distilling brings it to its teachers


def test_an_opd_run_resumes_exactly(tiny_policy_dir, tiny_teachers, tmp_path):
    Trainer(opd_config(tiny_policy_dir, tiny_teachers, steps=4), tmp_path / "straight").train()
    Trainer(opd_config(tiny_policy_dir, tiny_teachers, steps=2), tmp_path / "stopped").train()
    Trainer(opd_config(tiny_policy_dir, tiny_teachers, steps=4), tmp_path / "stopped", resume=True).train()
    a = load_file(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "stopped" / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "over,message",
    [
        ({"tasks": {"compose": 1.0, "text": 1.0, "quality": 1.0}}, r"task\(s\) \['quality'\] have no teacher"),
        ({"opd": {"mar_lambda": -0.1}}, "mar_lambda"),
        ({"opd": {"anchor": "no-such-anchor"}}, "opd.anchor 'no-such-anchor' is neither a teacher"),
        (
            {"sampler": {"steps": 4, "kind": "cps", "noise_level": 0.8, "timestep_fraction": 1.0}},
            r"step 3 \(sigma 0.\d+ -> 0.000\).*is deterministic",
        ),
        (
            {
                "sampler": {
                    "steps": 10,
                    "shift": 1.0,
                    "kind": "cps",
                    "noise_level": 0.8,
                    "window_size": 3,
                    "window_start_max": 6,
                    "timestep_fraction": 1.0,
                }
            },
            "step 8 .*x the median step.*before step 8",
        ),
        ({"opd": {"cold_start": {"weights": {"compose": 1.0}}}}, "give one weight per teacher"),
        ({"opd": {"routing": "epoch"}, "tasks": {"compose": 1.5, "text": 1.0}}, "needs integer task weights"),
    ],
)
def test_bad_opd_plans_fail_before_any_model_loads(tiny_policy_dir, tiny_teachers, tmp_path, monkeypatch, over, message):
    import flowopd.models

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the plan was checked")

    monkeypatch.setattr(flowopd.models, "load_backbone", no_loading)
    with pytest.raises((FlowOPDError, ValueError), match=message):
        Trainer(opd_config(tiny_policy_dir, tiny_teachers, **over), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_missing_teacher_checkpoint_is_named(tiny_policy_dir, tiny_teachers, tmp_path):
    cfg = opd_config(tiny_policy_dir, tiny_teachers)
    cfg.opd.teachers[1].checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(FlowOPDError, match="teacher 'text'.*neither a shipped teacher nor a LoRA folder"):
        check_plan(cfg)


def test_cli_train_opd_and_coldstart(tiny_policy_dir, tiny_teachers, tmp_path, run_cli):
    import yaml

    cfg = opd_config(tiny_policy_dir, tiny_teachers, steps=1)
    recipe = tmp_path / "opd.yaml"
    recipe.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    done = run_cli("train", "opd", "--config", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert f"LoRA: {tmp_path / 'run' / 'lora'}" in " ".join(done.stdout.split())
    done = run_cli(
        "train", "coldstart", "--method", "merge", "--merge", "elementwise", "--config", str(recipe), "--out", str(tmp_path / "cs")
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cs" / "lora_info.json").read_text())["cold_start"]["merge"] == "elementwise"
    bad = yaml.safe_load(recipe.read_text())
    bad["tasks"]["preference"] = 1.0
    recipe.write_text(yaml.safe_dump(bad))
    done = run_cli("train", "opd", "--config", str(recipe), "--out", str(tmp_path / "bad"))
    assert done.returncode != 0 and "have no teacher" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_epoch_routing_serves_one_task_per_step(tiny_policy_dir, tiny_teachers):
    from flowopd.draws import draw_prompts

    cfg = opd_config(tiny_policy_dir, tiny_teachers, tasks={"compose": 2.0, "text": 1.0}, opd={"routing": "epoch"})
    tasks = [{r.task for r in draw_prompts(cfg, step, 4)} for step in range(6)]
    assert tasks == [{"compose"}, {"compose"}, {"text"}] * 2  # the release's per-epoch routing, by the integer ratio
    mixed = opd_config(tiny_policy_dir, tiny_teachers)
    assert any(len({r.task for r in draw_prompts(mixed, step, 8)}) == 2 for step in range(3))  # per sample: batches mix tasks


@pytest.mark.slow
def test_mini_reproduce_runs_every_row_and_writes_the_tables(tmp_path):
    """`flowopd mini reproduce` end to end at toy size (1 step, 1 prompt per task): every stage, row and table."""
    import yaml

    from flowopd.mini.reproduce import ROWS, reproduce
    from flowopd.train_config import recipe_path

    values = yaml.safe_load(recipe_path("mini/opd").read_text())
    values.update(batch_size=8, micro_batch=8)
    values["opd"]["cold_start"]["sft"].update(prompts_per_teacher=1, images_per_prompt=1, steps=1, batch_size=4)
    recipe = tmp_path / "opd.yaml"
    recipe.write_text(yaml.safe_dump(values))
    results = reproduce(tmp_path / "out", config=str(recipe), limit=1, steps=1)
    assert list(results["rows"]) == [row for row, _, _ in ROWS]
    for row in results["rows"]:
        assert (tmp_path / "out" / "evals" / row / "summary.json").is_file()
    assert set(results["student_vs_teachers"]) == {"compose", "text", "preference", "quality"}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| opd - mix-weighted |" in table and "| opd-paper | 4 |" in table
    again = reproduce(tmp_path / "out", config=str(recipe), limit=1, steps=1)  # every stage is skipped: nothing recomputed
    same = json.dumps(again["rows"], sort_keys=True) == json.dumps(results["rows"], sort_keys=True)  # NaN (n = 1) != NaN in a dict
    assert again["wall_seconds_this_call"] < 30 and same


def test_the_reproduction_takes_its_teacher_rows_from_the_recipe(tmp_path):
    """Teacher rows follow the OPD recipe's teachers, named by each LoRA's objective; a task without one is refused."""
    from flowopd.config import load_config
    from flowopd.errors import ConfigError
    from flowopd.mini.reproduce import teacher_rows
    from flowopd.train_config import recipe_path

    cfg = load_config(TrainConfig, recipe_path("mini/opd"))
    assert teacher_rows(cfg)["teacher-text"] == ("mini-teacher-text", "GRPO teacher, mini_ocr")
    nft = tmp_path / "nft-text"
    nft.mkdir()
    (nft / "lora_info.json").write_text(json.dumps({"kind": "flowopd-lora", "objective": "nft"}))
    cfg.opd.teachers = [t if t.name != "text" else t.model_copy(update={"checkpoint": str(nft)}) for t in cfg.opd.teachers]
    rows = teacher_rows(cfg)
    assert rows["teacher-text"] == (str(nft), "NFT teacher, mini_ocr") and rows["teacher-compose"][1].startswith("GRPO")
    cfg.opd.teachers = [t for t in cfg.opd.teachers if t.name != "quality"]
    with pytest.raises(ConfigError, match="no teacher for task 'quality'"):
        teacher_rows(cfg)
    nft_recipe = load_config(TrainConfig, recipe_path("mini/opd-nft"))  # the NFT row set's recipe: the NFT recipes' outputs
    assert {row: spec for row, (spec, _) in teacher_rows(nft_recipe).items()} == {
        "teacher-compose": "runs/teacher-compose-nft/lora",
        "teacher-text": "runs/teacher-text-nft/lora",
        "teacher-preference": "mini-teacher-preference",
        "teacher-quality": "mini-teacher-quality",
    }
