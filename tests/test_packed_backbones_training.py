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
    # latent channels of the tiny model, the frozen text encoder to check
    "flux": dict(save=save_tiny_flux, cfg=1.0, shift=3.0, default_cfg=1.0, pipeline="FluxPipeline",
                 backbone="flowopd.flux:FluxBackbone", channels=16, encoder="text_encoder_2"),
    "qwen-image": dict(save=save_tiny_qwen_image, cfg=4.0, shift=1.5, default_cfg=4.0, pipeline="QwenImagePipeline",
                       backbone="flowopd.qwen_image:QwenImageBackbone", channels=4, encoder="text_encoder"),
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
    check_plan(cfg)
    plan = train_plan(cfg, processes=1)
    assert plan["backbone"] == family["name"]
    model = next(i for i in plan["inputs"]["items"] if i["kind"] == "model")
    assert model["ok"] and model["detail"] == "diffusers folder", model
