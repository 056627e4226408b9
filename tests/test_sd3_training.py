"""The one trainer on an SD3 backbone: a tiny random StableDiffusion3Pipeline saved to disk and loaded through the real
``from_pretrained``; a GRPO step, an OPD step with two teacher adapters and an anchor, and the LoRA in plain diffusers."""

import json

import pytest
import torch
from test_nft_training import nft_config
from test_opd import opd_config
from test_sd3_backbone import save_tiny_sd3
from test_trainer import tiny_config

from flowopd.errors import ConfigError
from flowopd.plan_checks import check_plan
from flowopd.reward_models import RewardModel, register_reward
from flowopd.trainer import Trainer

PROMPTS = ["a red apple on a table", "a photo of a blue bus", "a green field under a grey sky", "a yellow taxi at night"]
SAMPLER = {"steps": 4, "cfg": 4.5, "shift": 3.0, "kind": "sde", "noise_level": 0.7, "window_size": 2, "window_start_max": 1}


@register_reward("test_sd3_redness")
class Redness(RewardModel):
    """Mean red minus mean green: a reward any image has, so advantages are never all zero."""

    version = "1"

    def _score(self, images, prompts, metadata):
        return [float(img[..., 0].mean() - img[..., 1].mean()) / 255 for img in images], [{} for _ in images]


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return save_tiny_sd3(tmp_path_factory.mktemp("sd3-train"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "train.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def sd3_teachers(sd3_dir, tmp_path_factory):
    """Three random LoRAs on the tiny SD3 (compose, text, and the MAR anchor), saved as `flowopd train` saves them."""
    from flowopd.lora import add_lora, save_lora
    from flowopd.models import load_backbone, model_digest

    root = tmp_path_factory.mktemp("sd3-teachers")
    out = {}
    for i, task in enumerate(("compose", "text", "quality")):
        backbone = load_backbone(str(sd3_dir))
        torch.manual_seed(20 + i)
        add_lora(backbone.transformer, 4, 8)
        with torch.no_grad():
            for name, p in backbone.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
        info = {"kind": "flowopd-lora", "name": f"teacher-{task}", "base": str(sd3_dir), "base_digest": model_digest(str(sd3_dir))}
        save_lora(backbone.transformer, root / task, info)
        out[task] = root / task
    return out


def _grpo_config(sd3_dir, prompt_file, **over):
    """A one-step GRPO teacher run on the tiny SD3: one task, its prompts from a file, a reward every image has."""
    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    return tiny_config(sd3_dir, **values, sampler=SAMPLER, steps=1, **over)


def _lora(trainer):
    return torch.cat([p.detach().flatten().clone() for p in trainer.params])


def test_a_grpo_step_trains_the_lora_of_an_sd3_model(sd3_dir, prompt_file, tmp_path):
    cfg = _grpo_config(sd3_dir, prompt_file, gradient_checkpointing=True)
    trainer = Trainer(cfg, tmp_path / "run")
    before = _lora(trainer)
    assert all(not p.requires_grad for n, p in trainer.backbone.pipe.text_encoder_3.named_parameters())  # T5 frozen
    assert not any(p.requires_grad for p in trainer.backbone.vae.parameters())
    assert trainer.backbone.transformer.is_gradient_checkpointing
    metrics = trainer.train_step()
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["reward"] == metrics["reward"]
    assert not torch.equal(before, _lora(trainer))  # the update reached the LoRA through the SD3 transformer
    assert set(trainer.objective.last_batch["prompts"]) <= set(PROMPTS)  # training prompts come from the prompts: file
    assert trainer.backbone._embeds  # prompt embeddings cached (the negative prompt and each group's prompt)


def test_an_sd3_lora_trained_here_loads_in_plain_diffusers_and_gives_our_images(sd3_dir, prompt_file, tmp_path):
    """The LoRA `flowopd train` writes: `StableDiffusion3Pipeline.load_lora_weights` + the pipeline's sampler = our ODE sampler."""
    from diffusers import StableDiffusion3Pipeline

    from flowopd.models import load_backbone
    from flowopd.sampling import initial_noise, sample_ode

    cfg = _grpo_config(sd3_dir, prompt_file, optim={"lr": 5e-2, "ema_decay": 0.0})
    lora = Trainer(cfg, tmp_path / "run").train()
    info = json.loads((lora / "lora_info.json").read_text())
    assert info["base"] == str(sd3_dir) and info["base_digest"]
    ours = load_backbone(str(lora))  # our loader: the recorded base, the LoRA fused in
    prompts, seeds = PROMPTS[:2], [3, 4]
    mine = sample_ode(ours, prompts, seeds, steps=4, cfg=4.5, shift=3.0)
    base = sample_ode(load_backbone(str(sd3_dir)), prompts, seeds, steps=4, cfg=4.5, shift=3.0)
    assert (mine - base).abs().max() > 1e-3  # the trained LoRA changes the images
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    pipe.load_lora_weights(lora)  # plain diffusers, no flowopd code
    pipe.set_progress_bar_config(disable=True)
    latents = initial_noise(2, ours.latent_shape, seeds)
    theirs = pipe(prompts, negative_prompt="", num_inference_steps=4, guidance_scale=4.5, latents=latents, output_type="pt").images
    torch.testing.assert_close(mine, theirs.float(), atol=2e-4, rtol=0)


def test_an_nft_step_on_sd3_trains_a_lora_that_plain_diffusers_loads(sd3_dir, prompt_file, tmp_path):
    """DiffusionNFT on the SD3 backbone: CFG-free ODE rollouts, the loss at per-sample times through the SD3 transformer,
    and the LoRA in the diffusers format (the pipeline at guidance 1 gives our CFG-free images)."""
    from diffusers import StableDiffusion3Pipeline

    from flowopd.models import load_backbone
    from flowopd.sampling import initial_noise, sample_ode

    values = dict(tasks={"preference": 1.0}, prompts={"preference": str(prompt_file)}, rewards={"test_sd3_redness": 1.0})
    sampler = {"steps": 4, "shift": 3.0, "timestep_fraction": 0.5}
    cfg = nft_config(sd3_dir, **values, sampler=sampler, steps=1, optim={"lr": 5e-2, "ema_decay": 0.0})
    assert cfg.sampler.cfg == 1.0 and cfg.objective == "nft"
    trainer = Trainer(cfg, tmp_path / "run")
    before = _lora(trainer)
    lora = trainer.train()
    assert not torch.equal(before, _lora(trainer))
    prompts, seeds = PROMPTS[:2], [3, 4]
    mine = sample_ode(load_backbone(str(lora)), prompts, seeds, steps=4, cfg=1.0, shift=3.0)
    base = sample_ode(load_backbone(str(sd3_dir)), prompts, seeds, steps=4, cfg=1.0, shift=3.0)
    assert (mine - base).abs().max() > 1e-3
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    latents = initial_noise(2, load_backbone(str(sd3_dir)).latent_shape, seeds)
    theirs = pipe(prompts, num_inference_steps=4, guidance_scale=1.0, latents=latents, output_type="pt").images
    torch.testing.assert_close(mine, theirs.float(), atol=2e-4, rtol=0)


def test_an_opd_step_with_two_teacher_adapters_and_an_anchor_on_sd3(sd3_dir, sd3_teachers, prompt_file, tmp_path):
    cfg = opd_config(
        sd3_dir,
        sd3_teachers,
        prompts={"compose": str(prompt_file), "text": str(prompt_file)},
        sampler=SAMPLER,
        steps=1,
    )
    trainer = Trainer(cfg, tmp_path / "opd")
    assert set(trainer.objective.teacher_adapters) == {"compose", "text"} and trainer.objective.anchor_adapter == "anchor"
    before = _lora(trainer)
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("loss", "kl", "mar"))
    assert metrics["kl"] > 0 and metrics["mar"] > 0  # teachers and anchor differ from the student: a real signal
    assert not torch.equal(before, _lora(trainer))


def test_an_sd3_run_needs_training_prompts_for_every_task(sd3_dir):
    cfg = tiny_config(sd3_dir, tasks={"compose": 1.0, "text": 1.0}, rewards={"test_sd3_redness": 1.0}, sampler=SAMPLER)
    with pytest.raises(ConfigError, match=r"tasks \['compose', 'text'\] have no training prompts .* prompts: \{compose: geneval-train\}"):
        check_plan(cfg)
    with pytest.raises(ConfigError, match="resolution 64: the mini world is 32 px"):
        check_plan(tiny_config(sd3_dir.parent / "nowhere", resolution=64))


def test_a_peft_format_lora_from_elsewhere_loads_as_a_teacher_adapter(sd3_dir, tmp_path):
    """Teachers published as peft `save_pretrained` folders (Flow-GRPO's SD3.5-M releases): same velocity as the peft model."""
    from peft import LoraConfig, get_peft_model

    from flowopd.backbone import PromptEmbeds
    from flowopd.lora import load_lora, use_adapter
    from flowopd.models import load_backbone
    from flowopd.teachers import TeacherSpec

    theirs = load_backbone(str(sd3_dir)).transformer
    peft_model = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    folder = tmp_path / "published"
    peft_model.save_pretrained(folder)
    assert sorted(f.name for f in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert TeacherSpec(name="ocr", tasks=["text"], reward="ocr", checkpoint=str(folder)).lora_folder() == folder

    backbone = load_backbone(str(sd3_dir))
    load_lora(backbone.transformer, folder, "ocr")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *backbone.latent_shape, generator=g)
    cond = backbone.encode_prompts(PROMPTS[:2])
    sigma = torch.tensor(0.6)
    with torch.no_grad(), use_adapter(backbone.transformer, "ocr"):
        mine = backbone.velocity(x, sigma, cond)
    with torch.no_grad():
        ref = peft_model(
            hidden_states=x, timestep=(sigma * 1000).expand(2), encoder_hidden_states=cond.tokens, pooled_projections=cond.pooled
        ).sample
    with torch.no_grad(), use_adapter(backbone.transformer, None):
        plain = backbone.velocity(x, sigma, PromptEmbeds(cond.tokens, cond.pooled))  # the base: every adapter off
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)
    assert (mine - plain).abs().max() > 1e-3


def test_the_sft_cold_start_on_sd3_trains_on_the_teachers_images_in_latent_space(sd3_dir, sd3_teachers, prompt_file, tmp_path):
    """Teacher images for their prompts (from the prompts: files), encoded by the VAE, flow matching (eq. 1) on a fresh LoRA."""
    from flowopd.coldstart import sft_cold_start
    from flowopd.lora import read_lora_info

    sft = {"prompts_per_teacher": 2, "images_per_prompt": 1, "sample_steps": 2, "sample_shift": 3.0, "steps": 2, "batch_size": 2}
    cfg = opd_config(
        sd3_dir,
        sd3_teachers,
        prompts={"compose": str(prompt_file), "text": str(prompt_file)},
        sampler=SAMPLER,
        opd={"cold_start": {"method": "sft", "sft": sft}},
    )
    folder = sft_cold_start(cfg, tmp_path / "sft")
    info = read_lora_info(folder)
    assert info["cold_start"]["images"] == 4 and info["final_loss"] == info["final_loss"]  # 2 teachers x 2 prompts, finite
    assert info["base"] == str(sd3_dir)


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision is fixed by the first Accelerator: start and end clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_weights_train_a_float32_lora(sd3_dir, prompt_file, tmp_path, fresh_accelerate_state):
    """What a GPU run does (mixed_precision bf16): the frozen SD3 weights in bf16, the LoRA in float32 under autocast."""
    cfg = _grpo_config(sd3_dir, prompt_file, mixed_precision="bf16")
    trainer = Trainer(cfg, tmp_path / "bf16")
    weights = [p for n, p in trainer.backbone.transformer.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in weights} == {torch.bfloat16} and {p.dtype for p in trainer.params} == {torch.float32}
    assert trainer.backbone.pipe.text_encoder_3.dtype == torch.bfloat16
    before = _lora(trainer)
    metrics = trainer.train_step()
    assert torch.isfinite(torch.tensor(metrics["loss"])) and not torch.equal(before, _lora(trainer))


def test_flowopd_sample_on_an_sd3_model_uses_its_protocol_settings(sd3_dir, tmp_path, run_cli):
    res = run_cli("sample", "--model", str(sd3_dir), "--prompt", "a red bus", "--out", str(tmp_path / "bus.png"))
    assert res.returncode == 0, res.stderr
    assert "40 steps, cfg 4.5" in res.stdout and "Loading pipeline components" not in res.stderr
    from PIL import Image

    assert Image.open(tmp_path / "bus.png").size == (16, 16)  # the model's own size, not upscaled like the 32 px mini world
