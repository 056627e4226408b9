"""SD3Backbone against diffusers' own StableDiffusion3Pipeline, on a tiny random-weight SD3 built offline."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

from flowopd.errors import FlowOPDError
from flowopd.sampling import initial_noise, sample_ode, sigma_schedule
from flowopd.sd3 import SD3Backbone, load_sd3_backbone

PROMPTS = ["a red cat", "two blue dogs"]
SEEDS = [3, 7]
STEPS = 4
CFG = 4.5


def _clip_tokenizer():
    """A character-level CLIP BPE tokenizer (no merges) built in memory: no download."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def _t5_tokenizer():
    """A character-level T5 unigram tokenizer built in memory."""
    from transformers import T5TokenizerFast

    chars = string.ascii_lowercase
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def build_tiny_sd3_pipeline(seed: int = 0):
    """A StableDiffusion3Pipeline of the real classes with tiny random weights (16 latent channels, VAE factor 2, 16 px)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,  # heads * head_dim
        pooled_projection_dim=64,  # two CLIP projections of 32
        pos_embed_max_size=8,
    )
    clip = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    clip.update(vocab_size=54, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
    t5 = T5Config(vocab_size=56, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)
    text_encoder_3 = T5EncoderModel(t5)
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
        shift_factor=0.0609,
        scaling_factor=1.5305,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=_t5_tokenizer(),
    )


def save_tiny_sd3(path: Path, seed: int = 0) -> Path:
    """Write a tiny random SD3 diffusers folder (``model_index.json`` and one folder per component) to ``path``."""
    build_tiny_sd3_pipeline(seed).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SD3 saved with save_pretrained, to be loaded back through the real loading code."""
    return save_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="module")
def tiny_sd3_lora(tiny_sd3_dir, tmp_path_factory) -> Path:
    """A rank-4 LoRA (non-zero B) on the transformer's attention projections, saved by diffusers' save_lora_weights."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3_dir / "transformer")
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights="gaussian")
    )
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    folder = tmp_path_factory.mktemp("tiny-sd3-lora")
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return folder


def _pipeline_images(path: Path, lora: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own sampling from our initial noise: images and the scheduler's sigmas."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
    latents = initial_noise(len(SEEDS), (16, 8, 8), SEEDS)
    with torch.no_grad():
        images = pipe(PROMPTS, negative_prompt="", num_inference_steps=STEPS, guidance_scale=CFG, latents=latents, output_type="pt").images
    return images, pipe.scheduler.sigmas.clone()


def test_sample_ode_reproduces_the_pipeline(tiny_sd3_dir):
    backbone = SD3Backbone.from_pretrained(tiny_sd3_dir)
    assert backbone.world == "real" and backbone.latent_shape == (16, 8, 8) and backbone.dtype == torch.float32
    assert not any(p.requires_grad for p in backbone.transformer.parameters()) and not backbone.transformer.training
    assert not backbone.pipe.text_encoder_3.training and not any(p.requires_grad for p in backbone.vae.parameters())
    assert backbone.default_sampling == {"steps": 40, "cfg": 4.5, "shift": 3.0, "resolution": 16}
    cond = backbone.encode_prompts(PROMPTS)
    assert cond.tokens.shape == (2, 16 + 256, 32) and cond.pooled.shape == (2, 64)

    shift = backbone.default_sampling["shift"]
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=CFG, shift=shift)
    theirs, sigmas = _pipeline_images(tiny_sd3_dir)
    torch.testing.assert_close(sigmas, sigma_schedule(STEPS, shift), rtol=0, atol=0)  # the same schedule, bit for bit
    assert ours.shape == (2, 3, 16, 16) and ours.dtype == torch.float32
    assert 0.0 <= ours.min() and ours.max() <= 1.0 and ours.std() > 0.01
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_lora_is_fused_and_matches_the_pipeline(tiny_sd3_dir, tiny_sd3_lora):
    base = sample_ode(SD3Backbone.from_pretrained(tiny_sd3_dir), PROMPTS, SEEDS, steps=STEPS, cfg=CFG, shift=3.0)
    backbone = load_sd3_backbone(str(tiny_sd3_dir), lora=str(tiny_sd3_lora))
    assert not any("lora" in n for n, _ in backbone.transformer.named_parameters())  # fused, adapter gone
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=CFG, shift=3.0)
    theirs, _ = _pipeline_images(tiny_sd3_dir, lora=tiny_sd3_lora)
    assert (ours - base).abs().max() > 1e-2  # the LoRA changes the images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def _one_line_error(*args, **kwargs) -> str:
    with pytest.raises(FlowOPDError) as info:
        SD3Backbone.from_pretrained(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_bad_inputs_are_one_line_errors(tiny_sd3_dir, tmp_path):
    assert "not an existing folder" in _one_line_error(tmp_path / "nowhere")
    assert "model_index.json" in _one_line_error(tmp_path)
    assert "not a LoRA folder" in _one_line_error(tiny_sd3_dir, lora=tmp_path)
    assert "multiple of 4" in _one_line_error(tiny_sd3_dir, resolution=10)  # checked before the weights load
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"not safetensors")
    assert "does not fit" in _one_line_error(tiny_sd3_dir, lora=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}'
    )
    assert "could not load" in _one_line_error(broken)


def test_set_resolution(tiny_sd3_dir):
    backbone = SD3Backbone.from_pretrained(tiny_sd3_dir, resolution=8)
    assert backbone.latent_shape == (16, 4, 4) and backbone.default_sampling["resolution"] == 16  # the protocol size, min(512, native)
    images = sample_ode(backbone, PROMPTS[:1], SEEDS[:1], steps=2, cfg=CFG, shift=3.0)
    assert images.shape == (1, 3, 8, 8)
    backbone.set_resolution(12)
    assert backbone.latent_shape == (16, 6, 6)
    for bad in (10, 0, 15.0):
        with pytest.raises(ValueError, match="multiple of 4"):
            backbone.set_resolution(bad)
    with pytest.raises(ValueError, match="at most 32"):
        backbone.set_resolution(36)
    assert backbone.latent_shape == (16, 6, 6)  # a rejected size changes nothing
