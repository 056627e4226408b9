"""DiffusionNFT in the one trainer: ODE rollouts of the old policy, its soft update, exact resume, the LoRA as an OPD
teacher and in the merge cold start, and NFT plans that ask for SDE or GRPO settings refused before any model loads."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import tiny_values

from flowopd.errors import FlowOPDError
from flowopd.objectives.nft import old_policy_decay
from flowopd.train_config import TrainConfig
from flowopd.trainer import Trainer


def nft_config(model: Path, **over) -> TrainConfig:
    """The tiny GRPO run's fields with an nft section instead of grpo and a CFG-guided ODE sampler."""
    values = tiny_values(
        model,
        name="tiny-nft",
        rewards={"mini_geneval": 1.0, "mini_ocr": 1.0},
        micro_batch=3,  # not a divisor of the local batch
        sampler={"steps": 4, "cfg": 2.0, "shift": 1.0, "timestep_fraction": 0.75},  # 3 of the 4 schedule times
        nft={"beta": 0.5, "kl": 1e-2},
    )
    del values["grpo"]
    values.update(over)
    return TrainConfig.model_validate(values)


def _copies(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def test_nft_samples_with_the_old_policy_and_soft_updates_it_after_each_step(tiny_policy_dir, tmp_path, monkeypatch):
    import flowopd.objectives.nft as nft_module

    monkeypatch.setitem(nft_module.OLD_POLICY_DECAY, "default", (0, 0.25, 0.5))  # eta 0.5 after 2 optimizer steps: visible
    trainer = Trainer(nft_config(tiny_policy_dir), tmp_path / "run")
    nft = trainer.objective
    assert all(torch.equal(o, n) for o, n in zip(nft.old, nft.new, strict=True))  # the old policy starts as a copy
    assert not any(p.requires_grad for p in nft.old) and all(p.requires_grad for p in nft.new)
    before = _copies(nft.old)
    metrics = trainer.train_step()
    eta = old_policy_decay(2, "default")  # two optimizer steps per rollout
    assert eta == 0.5 and not all(torch.equal(o, n) for o, n in zip(nft.old, nft.new, strict=True))
    for old, prev, new in zip(nft.old, before, nft.new, strict=True):
        torch.testing.assert_close(old, eta * prev + (1 - eta) * new.detach())
    assert metrics["kl"] > 0 and "r_mean_abs" in metrics and "clip_frac" not in metrics

    # the rollout samples with the old adapter: moving it changes the images, moving the trained one does not
    with torch.no_grad():
        images = trainer._collect().traj.images
        for p in nft.new:
            p.add_(0.5)
        torch.testing.assert_close(trainer._collect().traj.images, images)
        for p in nft.old:
            p.add_(0.5)
        assert not torch.allclose(trainer._collect().traj.images, images)


def test_each_sample_trains_at_distinct_schedule_times_drawn_from_seed_step_and_sample(tiny_policy_dir, tmp_path):
    trainer = Trainer(nft_config(tiny_policy_dir), tmp_path / "run")
    batch = trainer._collect()
    assert batch.traj.states.shape[1] == 0 and batch.traj.latents.shape == (8, 3, 32, 32)  # no transitions kept
    trainer.objective.signal(batch)
    t = batch.signal["t"]
    schedule = set(trainer.objective.times.tolist())
    assert t.shape == (8, 3) and all(len(set(row.tolist())) == 3 and set(row.tolist()) <= schedule for row in t)
    assert 1.0 in schedule and 0.0 not in schedule
    x, sigma = trainer.objective.piece_inputs(batch, 1, 2, 5)
    x0, eps = batch.traj.latents[2:5], batch.signal["noise"][2:5, 1]
    torch.testing.assert_close(x, (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps)
    again = trainer._collect()
    trainer.objective.signal(again)
    assert torch.equal(again.signal["t"], t) and torch.equal(again.signal["noise"], batch.signal["noise"])


def test_an_nft_run_resumes_exactly_with_its_old_policy(tiny_policy_dir, tmp_path):
    Trainer(nft_config(tiny_policy_dir, steps=2), tmp_path / "straight").train()
    Trainer(nft_config(tiny_policy_dir, steps=1), tmp_path / "stopped").train()
    assert (tmp_path / "stopped" / "checkpoints" / "step-000001" / "objective.safetensors").is_file()
    Trainer(nft_config(tiny_policy_dir, steps=2), tmp_path / "stopped", resume=True).train()
    a = load_file(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "stopped" / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [[json.loads(x)["loss"] for x in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in ("straight", "stopped")]
    assert log[0] == log[1]


def test_an_nft_lora_serves_as_an_opd_teacher_and_in_the_merge_cold_start(tiny_policy_dir, tiny_teachers, tmp_path):
    from test_opd import opd_config

    nft_lora = Trainer(nft_config(tiny_policy_dir, steps=1, tasks={"compose": 1.0}), tmp_path / "nft").train()
    info = json.loads((nft_lora / "lora_info.json").read_text())
    assert info["objective"] == "nft" and info["nft"]["beta"] == 0.5 and info["rewards"]
    teachers = {**tiny_teachers, "compose": nft_lora}
    student = Trainer(opd_config(tiny_policy_dir, teachers, steps=1), tmp_path / "opd")
    assert student.objective.initial_lora() is not None  # the merge of the NFT and the GRPO teacher
    student.train()
    assert (tmp_path / "opd" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_a_per_sample_sigma_under_cfg_is_each_sample_at_its_own_time(tiny_policy_dir):
    from flowopd.models import load_backbone
    from flowopd.sampling import guided_velocity

    backbone = load_backbone(str(tiny_policy_dir))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([1.0, 0.5, 0.25])
    cond = backbone.encode_prompts(["a red square", "a blue circle", "one green star"])
    uncond = backbone.encode_prompts([""] * 3)
    with torch.no_grad():
        together = guided_velocity(backbone, x, sigma, cond, uncond, 3.0)
        alone = [guided_velocity(backbone, x[i : i + 1], sigma[i], cond[i : i + 1], uncond[i : i + 1], 3.0) for i in range(3)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "over,message",
    [
        ({"sampler": {"steps": 4, "window_size": 2}}, "sampler.window_size shapes an SDE rollout; DiffusionNFT samples by the"),
        ({"sampler": {"steps": 4, "kind": "cps"}}, "sampler.kind shapes an SDE rollout"),
        ({"sampler": {"steps": 4, "noise_level": 0.0}}, "sampler.noise_level shapes an SDE rollout"),
        ({"sampler": {"steps": 4, "same_latent": True}}, "same_latent makes a group's ODE samples identical"),
        ({"grpo": {"beta": 0.01}}, "the grpo section is GRPO's; DiffusionNFT reads nft:"),
        ({"rewards": {"mini_genevl": 1.0}}, "did you mean 'mini_geneval'"),
    ],
)
def test_bad_nft_plans_fail_before_any_model_loads(tiny_policy_dir, tmp_path, monkeypatch, over, message):
    import flowopd.models

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the plan was checked")

    monkeypatch.setattr(flowopd.models, "load_backbone", no_loading)
    with pytest.raises(FlowOPDError, match=message.replace("(", r"\(")):
        Trainer(nft_config(tiny_policy_dir, **over), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nft_and_opd_sections_together_are_refused_and_nft_defaults_to_cfg_free():
    with pytest.raises(ValueError, match="keep either the opd section"):
        TrainConfig.model_validate({"nft": {}, "opd": {}})
    assert TrainConfig.model_validate({"nft": {}}).sampler.cfg == 1.0  # the paper: CFG-free
    assert TrainConfig.model_validate({"nft": {}, "sampler": {"cfg": 3.0}}).sampler.cfg == 3.0
    assert TrainConfig.model_validate({}).sampler.cfg == 3.0 and TrainConfig.model_validate({"nft": {}}).objective == "nft"
