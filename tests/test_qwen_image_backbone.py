"""QwenImageBackbone against diffusers' own QwenImagePipeline, on a tiny random-weight Qwen-Image built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowopd.backbone import PromptEmbeds
from flowopd.diffusers_backbone import unpack_latents
from flowopd.errors import ConfigError
from flowopd.qwen_image import NEGATIVE_PROMPT, QWEN_IMAGE_LORA_TARGETS, QwenImageBackbone
from flowopd.sampling import initial_noise, sample_ode, sigma_schedule

PROMPTS = ["a red cat", "two blue dogs"]  # different token counts: the text mask is exercised
SEEDS = [3, 7]
STEPS = 4
PX = 16  # VAE factor 2: latents 8 x 8, 16 packed tokens
SEQ = 512
LATENT = (4, 8, 8)
# Qwen/Qwen-Image's scheduler/scheduler_config.json
SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
    time_shift_type="exponential", use_dynamic_shifting=True,
)  # fmt: skip


def _qwen_tokenizer():
    """A byte-level Qwen2 BPE tokenizer with no merges (one token per byte) and the chat template's special tokens."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"]
    )


def _text_encoder(vocab_size: int):
    """Qwen2.5-VL with a 2-layer, 16-wide language model (and a 1-block vision tower the pipeline never calls)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    rope = {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}
    text = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    text.update(rope_scaling=rope, rope_theta=1e6, vocab_size=vocab_size, max_position_embeddings=512, bos_token_id=0, eos_token_id=2)
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
    ids = dict(vision_start_token_id=0, vision_end_token_id=0, vision_token_id=0, image_token_id=0, video_token_id=0)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, hidden_size=16, vocab_size=vocab_size, **ids)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_qwen_image_pipeline(seed: int = 0):
    """A QwenImagePipeline of the real classes with tiny random weights (4 latent channels, VAE factor 2, Qwen-Image's
    scheduler config, per-channel latent statistics that are not the identity)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 latent channels x 2 x 2 packing
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,  # the text encoder's hidden size
        axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 2.0, 0.8, 1.2],
    )  # fmt: skip
    tokenizer = _qwen_tokenizer()
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def save_tiny_qwen_image(path: Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen-Image diffusers folder (``model_index.json`` and one folder per component) to ``path``."""
    build_tiny_qwen_image_pipeline(seed).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    return save_tiny_qwen_image(tmp_path_factory.mktemp("tiny-qwen-image"))


def _load(path: Path, **options) -> QwenImageBackbone:
    return QwenImageBackbone.from_pretrained(path, resolution=PX, **options)


def _pipeline_images(path: Path, shift: float | None, lora: Path | None = None, **call) -> torch.Tensor:
    return _pipeline_run(path, shift, lora, **call)[0]


def _pipeline_run(path: Path, shift: float | None, lora: Path | None = None, **call) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own sampling from our initial noise (packed), on our SD3-spaced schedule's points (``sigmas=``, which
    the pipeline shifts by its ``mu``) without the scheduler's terminal stretch; with ``shift`` None, the pipeline's
    default call (its own points, its scheduler as saved: stretched to 0.02). Images and the scheduler's sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(path)
    if shift is not None:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift_terminal=None)
        ours = sigma_schedule(STEPS, shift)[:-1].double()
        call["sigmas"] = (ours / (shift - (shift - 1) * ours)).tolist()  # the inverse of the shift
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
    latents = pipe._pack_latents(initial_noise(len(SEEDS), LATENT, SEEDS), len(SEEDS), *LATENT)
    with torch.no_grad():
        out = pipe(PROMPTS, height=PX, width=PX, num_inference_steps=STEPS, latents=latents, **{"output_type": "pt", **call})
    if shift is not None:
        torch.testing.assert_close(pipe.scheduler.sigmas, sigma_schedule(STEPS, shift), rtol=0, atol=1e-6)  # the same schedule
    return out.images, pipe.scheduler.sigmas.clone()


def test_prompt_embeds_carry_the_mask(tiny_qwen_dir):
    backbone = _load(tiny_qwen_dir)
    cond = backbone.encode_prompts(PROMPTS)
    lengths = cond.mask.sum(dim=1).tolist()
    assert cond.pooled.shape == (2, 0) and cond.tokens.shape == (2, max(lengths), 16) and lengths[0] < lengths[1]
    theirs, mask = backbone.pipe.encode_prompt(PROMPTS, device="cpu")
    torch.testing.assert_close(cond.tokens, theirs, rtol=0, atol=1e-5)
    assert torch.equal(cond.mask, mask)
    one = backbone.encode_prompts(PROMPTS[:1])  # alone: no padding, no mask (as the pipeline gives it)
    assert one.mask is None and one.tokens.shape[1] == lengths[0]
    both = PromptEmbeds.cat([one, cond])  # padded to the longest, masked
    assert both.tokens.shape == (3, lengths[1], 16) and both.mask.sum(dim=1).tolist() == [lengths[0], *lengths]
    assert torch.equal(both[1:].mask, cond.mask) and both.to("cpu")[[0]].mask.shape == (1, lengths[1])


def test_sample_ode_reproduces_the_pipeline_without_cfg(tiny_qwen_dir):
    backbone = _load(tiny_qwen_dir)
    assert backbone.world == "real" and backbone.latent_shape == LATENT and backbone.dtype == torch.float32
    assert not any(p.requires_grad for p in backbone.transformer.parameters()) and not backbone.transformer.training
    sampling = backbone.default_sampling
    schedule = {"shift": backbone.shift, "spacing": "pipeline", "shift_terminal": 0.02}  # the pipeline's (its scheduler's 0.02)
    assert sampling == {"steps": 50, "cfg": 4.0, **schedule, "resolution": 256}  # 256: the tiny model's native
    shift = backbone.shift  # exp(mu) for 16 image tokens
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    theirs = _pipeline_images(tiny_qwen_dir, shift, true_cfg_scale=1.0)
    assert ours.shape == (2, 3, PX, PX) and ours.std() > 0.01
    print(f"Qwen-Image sampler parity (no CFG): max abs diff {(ours - theirs).abs().max().item():.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_the_protocol_schedule_reproduces_the_pipelines_default_call(tiny_qwen_dir, cfg):
    """default_sampling's schedule (exp(mu) on the pipeline's points linspace(1, 1/T), stretched to the scheduler's
    shift_terminal 0.02) is the pipeline's own when called without ``sigmas=`` and with its scheduler as saved: the same
    sigmas bit for bit, the same images (without CFG, and with the protocol's true CFG 4 and the model card's negative)."""
    backbone = _load(tiny_qwen_dir)
    s = backbone.default_sampling
    schedule = {k: s[k] for k in ("shift", "spacing", "shift_terminal")}
    assert schedule == {"shift": backbone.shift, "spacing": "pipeline", "shift_terminal": 0.02}
    negative = {"negative_prompt": NEGATIVE_PROMPT} if cfg != 1.0 else {}
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=cfg, **schedule, **negative)
    theirs, sigmas = _pipeline_run(tiny_qwen_dir, None, true_cfg_scale=cfg, **negative)
    assert torch.equal(sigmas, sigma_schedule(STEPS, **schedule)) and float(sigmas[-2]) == pytest.approx(0.02)
    assert (sigmas - sigma_schedule(STEPS, backbone.shift, "pipeline")).abs().max() > 1e-2  # the stretch matters
    print(
        f"Qwen-Image default-call parity (pipeline spacing, terminal 0.02, cfg {cfg}): max abs diff {(ours - theirs).abs().max().item():.3e}"
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("negative", [" ", ""])
def test_true_cfg_with_its_normalisation_matches_the_pipeline(tiny_qwen_dir, negative):
    backbone = _load(tiny_qwen_dir)
    shift = backbone.shift
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=4.0, shift=shift, negative_prompt=negative)
    theirs = _pipeline_images(tiny_qwen_dir, shift, true_cfg_scale=4.0, negative_prompt=negative)
    print(f"Qwen-Image sampler parity (true CFG 4, negative {negative!r}): max abs diff {(ours - theirs).abs().max().item():.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    # the final latents too (the tiny random VAE shrinks differences): ours with decode as the identity, theirs unpacked
    backbone.decode = lambda x: x
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=4.0, shift=shift, negative_prompt=negative)
    packed = _pipeline_images(tiny_qwen_dir, shift, true_cfg_scale=4.0, negative_prompt=negative, output_type="latent")
    theirs = unpack_latents(packed, *LATENT)
    print(f"Qwen-Image latent parity (true CFG 4, negative {negative!r}): max abs diff {(ours - theirs).abs().max().item():.3e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_the_cfg_hook_applies_to_the_detached_branch_too(tiny_qwen_dir):
    """``detach_uncond`` (the training step's two forwards) gives the batched path's velocity, gradient through cond;
    both differ from the plain CFG formula (the tiny random VAE hides much of it in the images)."""
    from flowopd.sampling import guided_velocity

    backbone = _load(tiny_qwen_dir)
    cond, uncond = backbone.encode_prompts(PROMPTS), backbone.encode_prompts([" "] * 2)
    x = initial_noise(2, LATENT, SEEDS)
    sigma = torch.tensor(0.7)
    with torch.no_grad():
        batched = guided_velocity(backbone, x, sigma, cond, uncond, 4.0)
    backbone.transformer.requires_grad_(True)
    detached = guided_velocity(backbone, x, sigma, cond, uncond, 4.0, detach_uncond=True)
    assert detached.requires_grad
    torch.testing.assert_close(detached.detach(), batched, rtol=0, atol=1e-5)
    with torch.no_grad():
        uncond_v, cond_v = backbone.velocity(x, sigma, uncond), backbone.velocity(x, sigma, cond)
        plain = uncond_v + 4.0 * (cond_v - uncond_v)
    assert (plain - batched).abs().max() > 1e-3
    norms = [torch.linalg.vector_norm(v.view(2, 4, 4, 2, 4, 2), dim=(1, 3, 5)) for v in (batched, cond_v)]
    torch.testing.assert_close(norms[0], norms[1], rtol=1e-5, atol=1e-6)  # per packed token: the conditional norm


def test_qwen_image_spec_loads_through_models(tiny_qwen_dir):
    from flowopd.models import backbone_kind, is_flux, is_sd3, load_backbone, resolve_model

    for spec in (f"qwen-image:{tiny_qwen_dir}", str(tiny_qwen_dir)):
        assert backbone_kind(spec) == "qwen-image" and not is_sd3(spec) and not is_flux(spec)
        backbone = load_backbone(spec, resolution=PX)
        assert isinstance(backbone, QwenImageBackbone) and backbone.latent_shape == LATENT
    ref = resolve_model(f"qwen-image:{tiny_qwen_dir}")
    assert ref.world == "real" and isinstance(ref.load(), QwenImageBackbone)


def test_lora_round_trip_in_plain_diffusers(tiny_qwen_dir, tmp_path):
    """A LoRA added and saved by flowopd.lora loads with QwenImagePipeline.load_lora_weights and gives our images."""
    from flowopd.lora import add_lora, save_lora

    backbone = _load(tiny_qwen_dir)
    shift = backbone.shift
    base = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    add_lora(backbone.transformer, rank=4, alpha=4, targets=QWEN_IMAGE_LORA_TARGETS)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in backbone.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    ours = sample_ode(backbone, PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    save_lora(backbone.transformer, tmp_path, {"base": f"qwen-image:{tiny_qwen_dir}"})
    theirs = _pipeline_images(tiny_qwen_dir, shift, lora=tmp_path, true_cfg_scale=1.0)
    fused = sample_ode(_load(tiny_qwen_dir, lora=tmp_path), PROMPTS, SEEDS, steps=STEPS, cfg=1.0, shift=shift)
    assert (ours - base).abs().max() > 1e-2  # the LoRA changes the images
    print(f"Qwen-Image LoRA round trip: max abs diff {(ours - theirs).abs().max().item():.3e} (pipeline), "
          f"{(fused - theirs).abs().max().item():.3e} (fused)")  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    torch.testing.assert_close(fused, theirs, rtol=0, atol=1e-4)


def test_encode_images_normalises_as_the_img2img_pipeline(tiny_qwen_dir):
    """encode_images: the VAE's mean of a one-frame video, normalised per channel as QwenImageImg2ImgPipeline does."""
    from diffusers import QwenImageImg2ImgPipeline

    backbone = _load(tiny_qwen_dir)
    images = backbone.decode(initial_noise(2, LATENT, SEEDS))
    ours = backbone.encode_images(images)
    img2img = QwenImageImg2ImgPipeline(**backbone.pipe.components)
    posterior = backbone.vae.encode((images * 2 - 1)[:, :, None]).latent_dist
    backbone.vae.encode = lambda video: type("Out", (), {"latent_dist": posterior})()  # argmax: the mean, not a sample
    posterior.sample = lambda generator=None: posterior.mean
    theirs = img2img._encode_vae_image((images * 2 - 1)[:, :, None], generator=None)[:, :, 0]
    assert ours.shape == (2, *LATENT)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_set_resolution_and_shift(tiny_qwen_dir):
    import math

    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    backbone = _load(tiny_qwen_dir)
    backbone.set_resolution(32)
    assert backbone.latent_shape == (4, 16, 16) and backbone.image_seq_len == 64
    assert backbone.shift == pytest.approx(math.exp(calculate_shift(64, 256, 8192, 0.5, 0.9)))
    for bad in (18, 0, -4, 16.0, True):
        with pytest.raises(ConfigError, match="multiple of 4"):
            backbone.set_resolution(bad)
    assert backbone.latent_shape == (4, 16, 16)  # a refusal changes nothing
