"""The full-size architectures' sizes (flowopd/arch_sizes.py) against the real classes built on the meta device, and the
memory plans of the SD3.5-Large and FLUX.1-dev recipes (replicated and FSDP-sharded)."""

from __future__ import annotations

import json

import pytest
import torch

from flowopd import arch_sizes as sizes
from flowopd.lora import SD3_LORA_TARGETS


def _transformer(arch: sizes.ArchSizes):
    import diffusers

    cls, config = {
        "SD3.5-Medium": (diffusers.SD3Transformer2DModel, sizes.SD35M_TRANSFORMER_CONFIG),
        "SD3.5-Large": (diffusers.SD3Transformer2DModel, sizes.SD35L_TRANSFORMER_CONFIG),
        "FLUX.1-dev": (diffusers.FluxTransformer2DModel, sizes.FLUX_DEV_TRANSFORMER_CONFIG),
        "Qwen-Image": (diffusers.QwenImageTransformer2DModel, sizes.QWEN_IMAGE_TRANSFORMER_CONFIG),
    }[arch.name]
    with torch.device("meta"):
        return cls(**config)


@pytest.mark.parametrize("arch", list(sizes.ARCHS.values()), ids=list(sizes.ARCHS))
def test_sizes_match_the_architecture_built_on_the_meta_device(arch):
    model = _transformer(arch)
    assert sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) == arch.transformer
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n for n, _, _ in arch.attention} <= set(linear)
    assert all((linear[n].in_features, linear[n].out_features) == (i, o) for n, i, o in arch.attention)
    for targets in (SD3_LORA_TARGETS, ("to_q", "to_v"), ("attn2.to_q",)):
        hit = [m for n, m in linear.items() if any(n == t or n.endswith("." + t) for t in targets)]  # peft's matching rule
        assert arch.lora_per_rank(targets) == (sum(m.in_features + m.out_features for m in hit), len(hit))
    assert tuple(type(model)._no_split_modules) == arch.fsdp_units
    units = [m for m in model.modules() if type(m).__name__ in arch.fsdp_units]
    assert len(units) == arch.layers and max(sum(p.numel() for p in u.parameters()) for u in units) == arch.largest_unit
    width = model.config.num_attention_heads * model.config.attention_head_dim
    assert width == arch.width and sum(1 for n in linear if n.endswith("attn2.to_q")) == arch.dual_layers


def test_text_encoder_and_vae_sizes_match_their_classes():
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))
        t5 = T5EncoderModel(
            T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
        )  # fmt: skip
        qwen_vae = AutoencoderKLQwenImage()

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(clip_l) == sizes.FLUX_DEV.text_encoders["CLIP-L"]
    assert count(t5) == sizes.FLUX_DEV.text_encoders["T5-XXL"] == sizes.SD35M.text_encoders["T5-XXL"]
    assert count(vae) == sizes.SD3_VAE and count(qwen_vae) == sizes.QWEN_IMAGE.vae


def test_arch_for_picks_the_sizes_from_the_spec_or_the_folder(tmp_path):
    assert sizes.arch_for("flux:black-forest-labs/FLUX.1-dev", "flux") is sizes.FLUX_DEV
    assert sizes.arch_for("qwen-image:Qwen/Qwen-Image", "qwen-image") is sizes.QWEN_IMAGE
    assert sizes.arch_for("sd3:stabilityai/stable-diffusion-3.5-large", "sd3") is sizes.SD35L
    assert sizes.arch_for("sd3:stabilityai/stable-diffusion-3.5-medium", "sd3") is sizes.SD35M
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"num_layers": 38}))
    assert sizes.arch_for(f"sd3:{tmp_path}", "sd3") is sizes.SD35L and sizes.arch_for(str(tmp_path), "sd3") is sizes.SD35L


@pytest.mark.parametrize(
    "command, recipe, arch",
    [
        ("teacher", "flux/teacher-pickscore", "FLUX.1-dev"),
        ("opd", "flux/opd-merge", "FLUX.1-dev"),
        ("mix", "sd35l/mix-weighted", "SD3.5-Large"),
    ],
)
def test_full_size_plans_estimate_replicated_and_fsdp_memory(command, recipe, arch):
    from flowopd.cli.main import _load_train_config  # the code path of `flowopd train ... --config RECIPE`
    from flowopd.plan import format_plan, train_plan

    cfg = _load_train_config(recipe, {})
    plans = {n: train_plan(cfg, n, command, recipe) for n in (8, 32)}
    for n, plan in plans.items():
        mem = plan["memory"]
        assert mem["sizes_of"] == arch and plan["arithmetic"]["ok"]
        assert mem["fsdp"]["processes"] == n and mem["fsdp"]["total_gib"] < mem["total_gib"]
        sharded = sum(t["gib"] for t in mem["terms"] if t["sharded"])
        assert sharded > 0.9 * sizes.ARCHS[arch].transformer * 2 / sizes.GIB  # the transformer's weights are among them
        assert "with FSDP" in format_plan(plan)
    assert plans[32]["memory"]["fsdp"]["total_gib"] < plans[8]["memory"]["fsdp"]["total_gib"]  # more processes, smaller shards


FLUX_RECIPES = ["teacher-geneval", "teacher-ocr", "teacher-pickscore", "teacher-deqa", "mix-weighted", "opd-merge"]


@pytest.mark.parametrize("name", FLUX_RECIPES)
def test_flux_recipes_carry_flow_grpo_flux_values(name):
    """Flow-GRPO's FLUX configs (config/grpo.py): 6 training steps, guidance 3.5 embedded (no true CFG), 512 px, 48 prompts
    x 24 per epoch in micro-batches of 3, two updates an epoch, beta 0; GenEval: its Fast variant (cps, a 3-step window)."""
    from flowopd.cli.main import _load_train_config

    cfg = _load_train_config(f"flux/{name}", {})
    s = cfg.sampler
    assert cfg.model == "flux:black-forest-labs/FLUX.1-dev" and cfg.resolution == 512 and cfg.name == f"flux-{name}"
    assert (s.steps, s.cfg, s.shift, s.spacing, s.shift_terminal) == (6, 1.0, 1.8776, "pipeline", None)  # FluxPipeline's schedule
    assert (cfg.batch_size, cfg.group_size, cfg.micro_batch, cfg.updates_per_rollout) == (1152, 24, 3, 2)
    if name == "teacher-geneval":
        assert (s.kind, s.noise_level, s.window_size, s.window_start_max, cfg.grpo.clip_range, s.log_prob) == (
            "cps",
            0.8,
            3,
            0,
            1e-5,
            "flow_grpo",
        )
    else:
        assert (s.kind, s.noise_level, s.window_size, s.timestep_fraction) == ("sde", 0.9, 0, 0.99)
    if cfg.grpo is not None and cfg.opd is None:
        assert cfg.grpo.beta == 0.0


def test_flux_shift_is_flux_dev_exp_mu_at_512_px():
    import math

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift((512 // 16) ** 2, 256, 4096, 0.5, 1.15)  # FLUX.1-dev's scheduler config
    assert round(math.exp(mu), 4) == 1.8776


@pytest.mark.parametrize("name", ["teacher-geneval", "teacher-ocr", "teacher-pickscore", "teacher-deqa", "mix-weighted", "opd-merge"])
def test_sd35l_recipes_are_the_sd35m_ones_on_the_large_model(name):
    from flowopd.cli.main import _load_train_config

    large, medium = _load_train_config(f"sd35l/{name}", {}), _load_train_config(f"sd35m/{name}", {})
    assert large.model == "sd3:stabilityai/stable-diffusion-3.5-large" and large.name == f"sd35l-{name}"
    different = {k for k, v in large.model_dump().items() if medium.model_dump()[k] != v}
    assert different <= {"model", "name", "opd"}
    if large.opd is not None:
        assert all(t.checkpoint.startswith("runs/sd35l/") for t in large.opd.teachers) and large.opd.anchor.startswith("runs/sd35l/")


@pytest.mark.parametrize("config, arch", [("fsdp-flux-8gpu", sizes.FLUX_DEV), ("fsdp-qwen-image-8gpu", sizes.QWEN_IMAGE)])
def test_fsdp_configs_wrap_the_blocks_the_plan_gathers(config, arch, monkeypatch):
    """accelerate's own FSDP plugin, built from the config the way `accelerate launch` does, names the block classes the
    plan's FSDP line counts (diffusers' _no_split_modules of the model)."""
    import warnings
    from pathlib import Path

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{config}.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "script.py"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 8
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and tuple(plugin.transformer_cls_names_to_wrap) == arch.fsdp_units


@pytest.mark.parametrize("name", FLUX_RECIPES)
def test_qwen_image_recipes_carry_flow_grpo_qwen_image_values(name):
    """Flow-GRPO's `pickscore_qwenimage`: 10 steps, true CFG 4, noise 1.2, a 2-step SDE window starting in 0..3, 32 prompts
    x 16 per epoch in micro-batches of 4, two updates an epoch, beta 0, no EMA (the teachers)."""
    from flowopd.cli.main import _load_train_config
    from flowopd.plan import train_plan

    cfg = _load_train_config(f"qwen-image/{name}", {})
    s = cfg.sampler
    assert cfg.model == "qwen-image:Qwen/Qwen-Image" and cfg.resolution == 512 and cfg.name == f"qwen-image-{name}"
    assert (s.steps, s.cfg, s.shift, s.kind, s.noise_level, s.window_size, s.window_start_max) == (10, 4.0, 1.7138, "sde", 1.2, 2, 3)
    assert (s.spacing, s.shift_terminal) == ("pipeline", 0.02)  # QwenImagePipeline's schedule, its scheduler's stretch
    assert (cfg.batch_size, cfg.group_size, cfg.micro_batch, cfg.updates_per_rollout) == (512, 16, 4, 2)
    if name.startswith("teacher"):
        assert cfg.grpo.beta == 0.0 and cfg.optim.ema_decay == 0.0
    memory = train_plan(cfg, 8, "opd" if cfg.opd else "teacher", f"qwen-image/{name}")["memory"]
    assert memory["sizes_of"] == "Qwen-Image" and memory["fsdp"]["fits"]
    if name == "teacher-deqa":  # the 20B transformer, Qwen2.5-VL and DeQA's 8B judge do not fit one 80 GB GPU replicated
        assert not memory["fits"]


def test_qwen_image_shift_is_exp_mu_at_512_px():
    import math

    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    assert round(math.exp(calculate_shift((512 // 16) ** 2, 256, 8192, 0.5, 0.9)), 4) == 1.7138
