"""FluxBackbone against diffusers' own FluxPipeline, on a tiny random-weight FLUX.1 built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_sd3_backbone import _clip_tokenizer, _t5_tokenizer

from flowopd.errors import ConfigError
from flowopd.flux import FLUX_LORA_TARGETS, FluxBackbone
from flowopd.sampling import initial_noise, sample_ode, sigma_schedule

PROMPTS = ["a red cat", "two blue dogs"]
SEEDS = [3, 7]
STEPS = 4
PX = 16  # VAE factor 2: latents 8 x 8, 16 packed tokens
SEQ = 32  # T5 tokens
LATENT = (16, 8, 8)


def build_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A FluxPipeline of the real classes with tiny random weights (16 latent channels, VAE factor 2)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2 x 2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5 d_model
        pooled_projection_dim=32,  # CLIP hidden size
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    clip = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    clip.update(vocab_size=54, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    t5 = T5Config(vocab_size=56, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,  # FLUX.1's VAE
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )  # FLUX.1-dev's scheduler config
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**clip)),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )


def save_tiny_flux(path: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write a tiny random FLUX diffusers folder (``model_index.json`` and one folder per component) to ``path``."""
    build_tiny_flux_pipeline(seed, guidance_embeds).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


def _load(path: Path, **options) -> FluxBackbone:
    return FluxBackbone.from_pretrained(path, resolution=PX, max_sequence_length=SEQ, **options)


def _pipeline_images(path: Path, shift: float | None, lora: Path | None = None, **call) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own sampling from our initial noise (packed), on our SD3-spaced schedule's points (``sigmas=``, which
    the pipeline shifts by its ``mu``), or with ``shift`` None its own default points: images and the scheduler's sigmas."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
    if shift is not None:
        ours = sigma_schedule(STEPS, shift)[:-1].double()
        call["sigmas"] = (ours / (shift - (shift - 1) * ours)).tolist()  # the inverse of the shift
    latents = pipe._pack_latents(initial_noise(len(SEEDS), LATENT, SEEDS), len(SEEDS), *LATENT)
    with torch.no_grad():
        out = pipe(
            PROMPTS, height=PX, width=PX, num_inference_steps=STEPS, latents=latents, max_sequence_length=SEQ, output_type="pt", **call
        )
    return out.images, pipe.scheduler.sigmas.clone()


def test_sample_ode_reproduces_the_pipeline(tiny_flux_dir):
    backbone = _load(tiny_flux_dir)
    assert backbone.world == "real" and backbone.latent_shape == LATENT and backbone.dtype == torch.float32
    assert not any(p.requires_grad for p in backbone.transformer.parameters()) and not backbone.transformer.training
    assert backbone.guidance_distilled and not backbone.true_cfg and backbone.guidance == 3.5
    sampling = backbone.default_sampling
    assert sampling["steps"] == 28 and sampling["cfg"] == 1.0 and sampling["guidance"] == 3.5 and sampling["resolution"] == 256
    cond = backbone.encode_prompts(PROMPTS)
    assert cond.tokens.shape == (2, SEQ, 32) and cond.pooled.shape == (2, 32)

    shift = backbone.shift  # exp(mu) for 16 image tokens
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    theirs, sigmas = _pipeline_images(tiny_flux_dir, shift, guidance_scale=3.5)
    torch.testing.assert_close(sigmas, sigma_schedule(STEPS, shift), rtol=0, atol=1e-6)  # the same schedule
    assert ours.shape == (2, 3, PX, PX) and ours.std() > 0.01
    print(f"FLUX sampler parity (guidance 3.5, no CFG): max abs diff {(ours - theirs).abs().max().item():.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_the_protocol_schedule_reproduces_the_pipelines_default_call(tiny_flux_dir):
    """default_sampling's schedule (exp(mu) on FluxPipeline's points linspace(1, 1/T), no terminal stretch) is the
    pipeline's own when called without ``sigmas=``: the same sigmas bit for bit, the same images."""
    backbone = _load(tiny_flux_dir)
    s = backbone.default_sampling
    schedule = {k: s[k] for k in ("shift", "spacing", "shift_terminal")}
    assert schedule == {"shift": backbone.shift, "spacing": "pipeline", "shift_terminal": None}
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=s["cfg"], **schedule)
    theirs, sigmas = _pipeline_images(tiny_flux_dir, None, guidance_scale=s["guidance"])
    assert torch.equal(sigmas, sigma_schedule(STEPS, **schedule))
    assert (sigmas - sigma_schedule(STEPS, backbone.shift)).abs().max() > 1e-2  # not SD3's spacing
    print(f"FLUX default-call parity (pipeline spacing): max abs diff {(ours - theirs).abs().max().item():.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_true_cfg_matches_the_pipeline_and_is_opt_in(tiny_flux_dir):
    with pytest.raises(ConfigError, match="guidance-distilled"):
        sample_ode(_load(tiny_flux_dir), PROMPTS, SEEDS, steps=STEPS, cfg=4.0, shift=2.0)
    backbone = _load(tiny_flux_dir, true_cfg=True, guidance=2.0)
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=4.0, shift=backbone.shift, negative_prompt="")
    theirs, _ = _pipeline_images(tiny_flux_dir, backbone.shift, guidance_scale=2.0, true_cfg_scale=4.0, negative_prompt="")
    print(f"FLUX sampler parity (true CFG 4, guidance 2): max abs diff {(ours - theirs).abs().max().item():.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_flux_spec_loads_through_models(tiny_flux_dir):
    from flowopd.models import backbone_kind, is_sd3, load_backbone, resolve_model

    for spec in (f"flux:{tiny_flux_dir}", str(tiny_flux_dir)):
        assert backbone_kind(spec) == "flux" and not is_sd3(spec)
        backbone = load_backbone(spec, resolution=PX)
        assert isinstance(backbone, FluxBackbone) and backbone.latent_shape == LATENT
    ref = resolve_model(f"flux:{tiny_flux_dir}")
    assert ref.world == "real" and isinstance(ref.load(), FluxBackbone)


def test_lora_round_trip_in_plain_diffusers(tiny_flux_dir, tmp_path):
    """A LoRA added and saved by flowopd.lora loads with FluxPipeline.load_lora_weights and gives our images."""
    from flowopd.lora import add_lora, save_lora

    backbone = _load(tiny_flux_dir)
    shift = backbone.shift
    base = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    add_lora(backbone.transformer, rank=4, alpha=4, targets=FLUX_LORA_TARGETS)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in backbone.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    save_lora(backbone.transformer, tmp_path, {"base": f"flux:{tiny_flux_dir}"})
    theirs, _ = _pipeline_images(tiny_flux_dir, shift, lora=tmp_path, guidance_scale=3.5)
    fused = sample_ode(FluxBackbone.from_pretrained(tiny_flux_dir, lora=tmp_path, resolution=PX, max_sequence_length=SEQ),
                       PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)  # fmt: skip
    assert (ours - base).abs().max() > 1e-2  # the LoRA changes the images
    print(f"FLUX LoRA round trip: max abs diff {(ours - theirs).abs().max().item():.3e} (pipeline), "
          f"{(fused - theirs).abs().max().item():.3e} (fused)")  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    torch.testing.assert_close(fused, theirs, rtol=0, atol=1e-4)


def test_set_resolution_and_shift(tiny_flux_dir):
    backbone = _load(tiny_flux_dir)
    backbone.set_resolution(32)
    assert backbone.latent_shape == (16, 16, 16) and backbone.image_seq_len == 64
    import math

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert backbone.shift == pytest.approx(math.exp(calculate_shift(64)))
    with pytest.raises(ValueError, match="multiple of 4"):
        backbone.set_resolution(18)
