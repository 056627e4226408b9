"""The one trainer: a complete run, exact resume, the LoRA format, and bad input refused before any compute."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from flowopd.errors import FlowOPDError
from flowopd.run_folder import checkpoints
from flowopd.train_config import TrainConfig
from flowopd.trainer import Trainer


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def tiny_config(model: Path, **over) -> TrainConfig:
    return TrainConfig.model_validate(tiny_values(model, **over))


def tiny_values(model: Path, **over) -> dict:
    """The fields of a two-step GRPO run on a tiny model (``over`` replaces whole fields)."""
    values = dict(
        name="tiny",
        model=str(model),
        steps=2,
        tasks={"compose": 1.0, "text": 1.0},
        rewards={"mini_geneval": 1.0, "mini_ocr": 1.0, "mini_preference": 0.5},
        batch_size=8,
        group_size=4,
        micro_batch=4,
        sampler={"steps": 4, "cfg": 2.0, "shift": 1.0, "kind": "sde", "noise_level": 0.7, "window_size": 2, "window_start_max": 1},
        grpo={"beta": 0.04},
        updates_per_rollout=2,
        lora={"rank": 4, "alpha": 8},
        optim={"lr": 1e-2},
        checkpoint_every=1,
        trackers=[],
    )
    values.update(over)
    return values


def test_a_run_writes_config_log_checkpoints_and_a_diffusers_lora(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_policy_dir, trackers=["tensorboard"]), out)
    lora = trainer.train()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "accelerate's tensorboard tracker wrote nothing"
    assert lora == out / "lora"
    assert lora.stat().st_mode & 0o777 == 0o777 & ~_umask()  # a plain folder's permissions, not a temp folder's 0700
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"] and info["config"]["batch_size"] == 8 and info["base_digest"]
    assert yaml.safe_load((out / "config.yaml").read_text())["group_size"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert {"reward", "kl", "clip_frac", "ratio", "grad_norm", "reward/mini_preference"} <= set(log[0])
    assert log[1]["kl"] > 0  # after one update the policy has moved away from the reference
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000001", "step-000002"]

    # the LoRA file is the diffusers SD3 format: transformer.-prefixed keys, peft config in the metadata
    weights = load_file(lora / "pytorch_lora_weights.safetensors")
    assert all(k.startswith("transformer.") for k in weights) and any("lora_B" in k for k in weights)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # it learned something
    lora_info = json.loads((lora / "lora_info.json").read_text())
    assert lora_info["base_digest"] == info["base_digest"] and lora_info["step"] == 2

    # loading it through diffusers' own loader reproduces the trained (EMA) policy
    from flowopd.lora import load_lora
    from flowopd.models import load_backbone

    fresh = load_backbone(str(tiny_policy_dir))
    load_lora(fresh.transformer, lora, "teacher")
    trainer.ema.copy_to(trainer.params)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor(0.5)
    cond = fresh.encode_prompts(["a red square", "a blue circle"])
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, sigma, cond), trainer.backbone.velocity(x, sigma, cond), rtol=1e-5, atol=1e-5)
        fresh.transformer.disable_adapters()
        assert not torch.allclose(fresh.velocity(x, sigma, cond), trainer.backbone.velocity(x, sigma, cond), atol=1e-6)


def test_resume_continues_exactly_where_the_run_stopped(tiny_policy_dir, tmp_path):
    Trainer(tiny_config(tiny_policy_dir, steps=4), tmp_path / "straight").train()
    Trainer(tiny_config(tiny_policy_dir, steps=2), tmp_path / "stopped").train()  # stops after step 2 (a checkpoint)
    (tmp_path / "stopped" / "log.jsonl").open("a").write('{"step": 3, "reward": 9}\n')  # a step that never reached a checkpoint
    Trainer(tiny_config(tiny_policy_dir, steps=4), tmp_path / "stopped", resume=True).train()
    a = load_file(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "stopped" / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on CPU
    log_a = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()]
    strip = (
        [{k: v for k, v in r.items() if not k.startswith("time")} for r in log_a],
        [{k: v for k, v in r.items() if not k.startswith("time")} for r in log_b],
    )
    assert strip[0] == strip[1]


@pytest.mark.parametrize(
    "over,message",
    [
        ({"rewards": {"mini_genevl": 1.0}}, "did you mean 'mini_geneval'"),
        ({"batch_size": 10, "group_size": 4}, "group_size 4 does not divide batch_size 10; use batch_size 12"),
        ({"sampler": {"steps": 4, "window_size": 3, "window_start_max": 2}}, "outside the 4-step schedule"),
        ({"sampler": {"steps": 4, "noise_level": 0.0}}, "noise_level 0"),
        ({"tasks": {"text": 1.0}, "rewards": {"mini_geneval": 1.0}}, "can score text prompts"),
        ({"updates_per_rollout": 3}, "updates_per_rollout=3"),
    ],
)
def test_bad_plans_fail_before_any_model_loads(tiny_policy_dir, tmp_path, monkeypatch, over, message):
    import flowopd.models

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the plan was checked")

    monkeypatch.setattr(flowopd.models, "load_backbone", no_loading)
    with pytest.raises(FlowOPDError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Trainer(tiny_config(tiny_policy_dir, **over), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_updates_per_rollout_under_grpo_reads_as_the_top_level_field_and_a_conflict_is_refused(tmp_path):
    old = tiny_config(tmp_path, grpo={"beta": 0.04, "updates_per_rollout": 2}, updates_per_rollout=2)
    new = tiny_config(tmp_path)
    assert old.updates_per_rollout == 2 and old.digest() == new.digest()
    with pytest.raises(ValueError, match="updates_per_rollout 1 and grpo.updates_per_rollout 2 differ"):
        tiny_config(tmp_path, grpo={"updates_per_rollout": 2}, updates_per_rollout=1)


def test_an_existing_run_needs_resume_and_a_checkpoint_from_another_model_is_refused(tiny_policy_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_policy_dir, steps=1), out).train()
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(FlowOPDError, match="already holds a training run; pass --resume"):
        Trainer(tiny_config(tiny_policy_dir, steps=2), out)
    with pytest.raises(FlowOPDError, match="was trained from model"):
        Trainer(tiny_config(tiny_model_dir, steps=2), out, resume=True)
    with pytest.raises(FlowOPDError, match="different config .*group_size: 4 then, 2 now"):
        Trainer(tiny_config(tiny_policy_dir, steps=2, group_size=2), out, resume=True)
    with pytest.raises(FlowOPDError, match="nothing to resume"):
        Trainer(tiny_config(tiny_policy_dir), tmp_path / "empty", resume=True)
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing was touched


def test_a_base_model_changed_under_a_run_is_refused(tiny_policy_dir, tmp_path):
    import shutil

    from flowopd.mini.model import MiniBackbone

    model = tmp_path / "model"
    shutil.copytree(tiny_policy_dir, model)
    Trainer(tiny_config(model, steps=1), tmp_path / "run").train()
    MiniBackbone.random(seed=9).save_pretrained(model)  # same folder, other weights
    with pytest.raises(FlowOPDError, match="another version"):
        Trainer(tiny_config(model, steps=2), tmp_path / "run", resume=True)


def test_a_lora_is_never_applied_to_another_base(tiny_policy_dir, tiny_model_dir, tmp_path):
    from flowopd.models import load_backbone

    out = tmp_path / "run"
    Trainer(tiny_config(tiny_policy_dir, steps=1), out).train()
    assert load_backbone(str(out / "lora")) is not None  # its own base: fine
    info_file = out / "lora" / "lora_info.json"
    info = json.loads(info_file.read_text())
    info["base"] = str(tiny_model_dir)  # point it at another model: the recorded digest no longer matches
    info_file.write_text(json.dumps(info))
    with pytest.raises(FlowOPDError, match="trained on another base model"):
        load_backbone(str(out / "lora"))


def test_an_exported_checkpoint_is_the_lora_the_run_would_have_saved_there(tiny_policy_dir, tmp_path):
    """The last checkpoint, rebuilt as a LoRA folder, holds exactly the EMA weights the run wrote to lora/."""
    from flowopd.checkpoints import export_checkpoint
    from flowopd.lora import LORA_FILE

    out = tmp_path / "run"
    Trainer(tiny_config(tiny_policy_dir, keep_checkpoints=5), out).train()
    first, last = checkpoints(out)
    exported = export_checkpoint(last, tmp_path / "step-2")
    mine, theirs = load_file(exported / LORA_FILE), load_file(out / "lora" / LORA_FILE)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert json.loads((exported / "lora_info.json").read_text())["step"] == 2
    early = load_file(export_checkpoint(first, tmp_path / "step-1") / LORA_FILE)
    assert any(not torch.equal(early[k], mine[k]) for k in mine)  # another step, other weights
    with pytest.raises(FlowOPDError, match="not a complete training checkpoint"):
        export_checkpoint(out / "lora", tmp_path / "x")


class _Stopped(Exception):
    pass


def _stop_after(step_to_stop: int):
    def progress(step, metrics):
        if step == step_to_stop:
            raise _Stopped

    return progress


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_stopped_before_its_first_checkpoint_starts_over_in_place(tiny_policy_dir, tmp_path, resume):
    """Nothing to resume yet: the same command again (with or without --resume) restarts it; another config is refused."""
    out = tmp_path / "run"
    cfg = tiny_config(tiny_policy_dir, steps=2, checkpoint_every=5)
    with pytest.raises(_Stopped):  # killed after step 1: a log line and run.json, no checkpoint
        Trainer(cfg, out).train(_stop_after(1))
    assert (out / "run.json").is_file() and not checkpoints(out)
    with pytest.raises(FlowOPDError, match="different config .*group_size: 4 then, 2 now"):
        Trainer(tiny_config(tiny_policy_dir, steps=2, checkpoint_every=5, group_size=2), out, resume=resume)
    trainer = Trainer(cfg, out, resume=resume)
    assert trainer.restarted and trainer.resume_from is None
    trainer.train()
    Trainer(cfg, tmp_path / "straight").train()
    a, b = (
        load_file(out / "lora" / "pytorch_lora_weights.safetensors"),
        load_file(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # the restart is the run from scratch
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_sampler_defaults_follow_the_model():
    """Issue 15: an empty recipe trained the mini base with SD3.5's CFG 4.5 and shift 3 without a word."""
    from flowopd.models import MINI_SAMPLING

    empty = TrainConfig.model_validate({})
    assert (empty.sampler.cfg, empty.sampler.shift) == (MINI_SAMPLING["cfg"], MINI_SAMPLING["shift"])
    assert TrainConfig.model_validate({"sampler": {"cfg": 2.0}}).sampler.cfg == 2.0  # what a recipe says stays
    sd3 = TrainConfig.model_validate({"model": "sd3:stabilityai/stable-diffusion-3.5-medium"})
    assert (sd3.sampler.cfg, sd3.sampler.shift) == (4.5, 3.0)
