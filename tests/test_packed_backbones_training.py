"""The one trainer on the packed-latent backbones, FLUX.1 and Qwen-Image: a tiny random pipeline of each, saved to disk and
loaded through ``flux:<folder>`` / ``qwen-image:<folder>``; a GRPO step whose LoRA loads in plain diffusers, and an OPD
step with two teacher adapters and an anchor. The same trainer and objectives as SD3 (tests/test_sd3_training.py), no
special case: FLUX trains at ``cfg`` 1 (guidance-distilled: the embedded guidance, not CFG), Qwen-Image at its true CFG 4
(with the pipeline's normalisation)."""

import json

import pytest
import torch
from test_flux_backbone import save_tiny_flux
from test_opd import opd_config
from test_qwen_image_backbone import save_tiny_qwen_image
from test_sd3_training import PROMPTS
from test_trainer import tiny_config

from flowopd.trainer import Trainer

PX = 16  # VAE factor 2: latents 8 x 8, 16 packed tokens (both tiny pipelines)
WINDOW = {"steps": 4, "kind": "sde", "noise_level": 0.7, "window_size": 2, "window_start_max": 1}
FAMILIES = {
    # prefix, tiny pipeline, sampler cfg / shift, what a recipe without sampler.cfg gets, pipeline and backbone classes,
    # latent channels of the tiny model, the frozen text encoder to check, what a recipe without sampler.shift_terminal
    # gets, the scheduler's calculate_shift bounds and the shipped recipes' shift at 512 px
    "flux": dict(save=save_tiny_flux, cfg=1.0, shift=3.0, default_cfg=1.0, pipeline="FluxPipeline",
                 backbone="flowopd.flux:FluxBackbone", channels=16, encoder="text_encoder_2", shift_terminal=None,
                 mu_bounds=(256, 4096, 0.5, 1.15), recipe_shift=1.8776),
    "qwen-image": dict(save=save_tiny_qwen_image, cfg=4.0, shift=1.5, default_cfg=4.0, pipeline="QwenImagePipeline",
                       backbone="flowopd.qwen_image:QwenImageBackbone", channels=4, encoder="text_encoder", shift_terminal=0.02,
                       mu_bounds=(256, 8192, 0.5, 0.9), recipe_shift=1.7138),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """One family's settings and its tiny base as a model spec."""
    fam = dict(FAMILIES[request.param], name=request.param)
    fam["spec"] = f"{request.param}:{fam['save'](tmp_path_factory.mktemp(f'{request.param}-train'))}"
    fam["sampler"] = {**WINDOW, "cfg": fam["cfg"], "shift": fam["shift"]}
    return fam


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "train.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def teachers(family, tmp_path_factory):
    """Three random LoRAs on the tiny base (compose, text, and the MAR anchor), saved as `flowopd train` saves them."""
    from flowopd.lora import add_lora, save_lora
    from flowopd.models import load_backbone, model_digest

    spec, root, out = family["spec"], tmp_path_factory.mktemp(f"{family['name']}-teachers"), {}
    for i, task in enumerate(("compose", "text", "quality")):
        backbone = load_backbone(spec, resolution=PX)
        torch.manual_seed(20 + i)
        add_lora(backbone.transformer, 4, 8)
        with torch.no_grad():
            for name, p in backbone.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
        save_lora(
            backbone.transformer,
            root / task,
            {"kind": "flowopd-lora", "name": f"teacher-{task}", "base": spec, "base_digest": model_digest(spec)},
        )
        out[task] = root / task
    return out


def _lora(trainer):
    return torch.cat([p.detach().flatten().clone() for p in trainer.params])


def test_a_grpo_step_trains_a_lora_that_plain_diffusers_loads(family, prompt_file, tmp_path):
    import importlib

    import diffusers

    from flowopd.models import diffusers_source

    module, cls = family["backbone"].split(":")
    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    cfg = tiny_config(family["spec"], **values, sampler=family["sampler"], resolution=PX, steps=1, optim={"lr": 5e-2, "ema_decay": 0.0})
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.backbone, getattr(importlib.import_module(module), cls))
    assert trainer.backbone.latent_shape == (family["channels"], PX // 2, PX // 2)
    assert not any(p.requires_grad for p in getattr(trainer.backbone.pipe, family["encoder"]).parameters())  # frozen
    assert not any(p.requires_grad for p in trainer.backbone.vae.parameters())
    before = _lora(trainer)
    lora = trainer.train()
    assert not torch.equal(before, _lora(trainer))  # the update reached the LoRA through the packed transformer
    assert set(trainer.objective.last_batch["prompts"]) <= set(PROMPTS)
    info = json.loads((lora / "lora_info.json").read_text())
    assert info["base"] == family["spec"] and info["base_digest"]
    pipe = getattr(diffusers, family["pipeline"]).from_pretrained(diffusers_source(family["spec"]))
    pipe.load_lora_weights(lora)  # plain diffusers, no flowopd code
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    assert loaded and any(p.abs().max() > 0 for p in loaded.values())  # the trained (non-zero) B matrices arrived


def test_an_opd_step_with_two_teacher_adapters_and_an_anchor(family, teachers, prompt_file, tmp_path):
    prompts = {"compose": str(prompt_file), "text": str(prompt_file)}
    cfg = opd_config(family["spec"], teachers, prompts=prompts, sampler=family["sampler"], resolution=PX, steps=1)
    trainer = Trainer(cfg, tmp_path / "opd")
    assert set(trainer.objective.teacher_adapters) == {"compose", "text"} and trainer.objective.anchor_adapter == "anchor"
    before = _lora(trainer)
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("loss", "kl", "mar"))
    assert metrics["kl"] > 0 and metrics["mar"] > 0  # teachers and anchor differ from the student: a real signal
    assert not torch.equal(before, _lora(trainer))


def test_a_recipe_without_sampler_cfg_gets_the_models_own(family, prompt_file):
    """FLUX gets 1 (not the mini world's 3 nor SD3.5's 4.5, which a guidance-distilled model refuses), Qwen-Image its true
    CFG 4; the resolution is not the mini world's 32 px; the plan names the backbone and finds the folder."""
    from flowopd.plan import train_plan
    from flowopd.plan_checks import check_plan

    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    cfg = tiny_config(family["spec"], **values, sampler={"steps": 4, "kind": "sde"}, resolution=PX)
    assert cfg.sampler.cfg == family["default_cfg"]
    assert (cfg.sampler.spacing, cfg.sampler.shift_terminal) == ("pipeline", family["shift_terminal"])  # the pipeline's schedule
    check_plan(cfg)
    plan = train_plan(cfg, processes=1)
    assert plan["backbone"] == family["name"] and plan["sampler"]["spacing"] == "pipeline"
    model = next(i for i in plan["inputs"]["items"] if i["kind"] == "model")
    assert model["ok"] and model["detail"] == "diffusers folder", model


@pytest.mark.parametrize("px", [None, 512, 1024])
def test_a_recipe_without_sampler_shift_gets_the_models_exp_mu(family, prompt_file, px):
    """FLUX.1 / Qwen-Image recipes that leave ``sampler.shift`` unset get the pipeline's exp(mu) at their resolution (real
    models' VAE factor 8 and 2x2 packing; unset: 512 px, the backbone's default), not SD3's 3; what they set is kept, and
    so is a spacing / terminal they set."""
    import math

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    cfg = tiny_config(family["spec"], **values, sampler={"steps": 4}, resolution=px)
    assert cfg.sampler.shift == pytest.approx(math.exp(calculate_shift(((px or 512) // 16) ** 2, *family["mu_bounds"])), rel=1e-12)
    if px in (None, 512):
        assert round(cfg.sampler.shift, 4) == family["recipe_shift"]  # what the shipped recipes state
    own = dict(steps=4, shift=2.5, spacing="sd3", shift_terminal=None)
    kept = tiny_config(family["spec"], **values, sampler=own, resolution=px).sampler
    assert (kept.shift, kept.spacing, kept.shift_terminal) == (2.5, "sd3", None)


def test_sd3_and_mini_recipes_keep_sd3_spacing(prompt_file):
    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    for spec in ("mini-base", "sd3:stabilityai/stable-diffusion-3.5-medium"):
        s = tiny_config(spec, **values, sampler={"steps": 4}).sampler
        assert (s.spacing, s.shift_terminal) == ("sd3", None) and s.shift == (1.0 if spec == "mini-base" else 3.0)
