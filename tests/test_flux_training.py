"""The one trainer on a FLUX.1 backbone: a tiny random FluxPipeline saved to disk and loaded through ``flux:<folder>``;
a GRPO step whose LoRA loads in plain diffusers, and an OPD step with two teacher adapters and an anchor. The same
trainer and objectives as SD3 (tests/test_sd3_training.py), no FLUX special case; ``cfg`` 1 (guidance-distilled)."""

import json

import pytest
import torch
from test_flux_backbone import PX, save_tiny_flux
from test_opd import opd_config
from test_sd3_training import PROMPTS
from test_trainer import tiny_config

from flowopd.trainer import Trainer

# cfg 1: FLUX.1-dev is guidance-distilled (the embedded guidance, not CFG); true CFG would need `true_cfg`
SAMPLER = {"steps": 4, "cfg": 1.0, "shift": 3.0, "kind": "sde", "noise_level": 0.7, "window_size": 2, "window_start_max": 1}


@pytest.fixture(scope="module")
def flux_spec(tmp_path_factory):
    return f"flux:{save_tiny_flux(tmp_path_factory.mktemp('flux-train'))}"


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "train.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def flux_teachers(flux_spec, tmp_path_factory):
    """Three random LoRAs on the tiny FLUX (compose, text, and the MAR anchor), saved as `flowopd train` saves them."""
    from flowopd.lora import add_lora, save_lora
    from flowopd.models import load_backbone, model_digest

    root = tmp_path_factory.mktemp("flux-teachers")
    out = {}
    for i, task in enumerate(("compose", "text", "quality")):
        backbone = load_backbone(flux_spec, resolution=PX)
        torch.manual_seed(20 + i)
        add_lora(backbone.transformer, 4, 8)
        with torch.no_grad():
            for name, p in backbone.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
        info = {"kind": "flowopd-lora", "name": f"teacher-{task}", "base": flux_spec, "base_digest": model_digest(flux_spec)}
        save_lora(backbone.transformer, root / task, info)
        out[task] = root / task
    return out


def _grpo_config(flux_spec, prompt_file, **over):
    """A one-step GRPO teacher run on the tiny FLUX: one task, its prompts from a file, a reward every image has."""
    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    return tiny_config(flux_spec, **values, sampler=SAMPLER, resolution=PX, steps=1, **over)


def _lora(trainer):
    return torch.cat([p.detach().flatten().clone() for p in trainer.params])


def test_a_grpo_step_trains_a_flux_lora_that_plain_diffusers_loads(flux_spec, prompt_file, tmp_path):
    from diffusers import FluxPipeline

    from flowopd.flux import FluxBackbone
    from flowopd.models import diffusers_source

    cfg = _grpo_config(flux_spec, prompt_file, optim={"lr": 5e-2, "ema_decay": 0.0})
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.backbone, FluxBackbone) and trainer.backbone.latent_shape == (16, PX // 2, PX // 2)
    assert not any(p.requires_grad for p in trainer.backbone.pipe.text_encoder_2.parameters())  # T5 frozen
    assert not any(p.requires_grad for p in trainer.backbone.vae.parameters())
    before = _lora(trainer)
    lora = trainer.train()
    assert not torch.equal(before, _lora(trainer))  # the update reached the LoRA through the FLUX transformer
    assert set(trainer.objective.last_batch["prompts"]) <= set(PROMPTS)
    info = json.loads((lora / "lora_info.json").read_text())
    assert info["base"] == flux_spec and info["base_digest"]
    pipe = FluxPipeline.from_pretrained(diffusers_source(flux_spec))
    pipe.load_lora_weights(lora)  # plain diffusers, no flowopd code
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert loaded and any(p.abs().max() > 0 for p in loaded.values())  # the trained (non-zero) B matrices arrived


def test_an_opd_step_with_two_teacher_adapters_and_an_anchor_on_flux(flux_spec, flux_teachers, prompt_file, tmp_path):
    cfg = opd_config(
        flux_spec,
        flux_teachers,
        prompts={"compose": str(prompt_file), "text": str(prompt_file)},
        sampler=SAMPLER,
        resolution=PX,
        steps=1,
    )
    trainer = Trainer(cfg, tmp_path / "opd")
    assert set(trainer.objective.teacher_adapters) == {"compose", "text"} and trainer.objective.anchor_adapter == "anchor"
    before = _lora(trainer)
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("loss", "kl", "mar"))
    assert metrics["kl"] > 0 and metrics["mar"] > 0  # teachers and anchor differ from the student: a real signal
    assert not torch.equal(before, _lora(trainer))


def test_a_flux_run_samples_without_cfg_unless_told(flux_spec, prompt_file):
    """A recipe that leaves ``sampler.cfg`` unset on a FLUX base gets 1 (not the mini world's 3 nor SD3.5's 4.5, which a
    guidance-distilled model refuses); the FLUX resolution is not the mini world's 32 px."""
    from flowopd.plan_checks import check_plan

    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    cfg = tiny_config(flux_spec, **values, sampler={"steps": 4, "kind": "sde"}, resolution=PX)
    assert cfg.sampler.cfg == 1.0
    check_plan(cfg)
    from flowopd.plan import train_plan

    plan = train_plan(cfg, processes=1)
    assert plan["backbone"] == "flux"
    model = next(i for i in plan["inputs"]["items"] if i["kind"] == "model")
    assert model["ok"] and model["detail"] == "diffusers folder", model
