"""ImageReward v1 rebuilt from transformers' BLIP parts, loading the official ``ImageReward.pt``.

The official scorer (THUDM/ImageReward, ``ImageReward/ImageReward.py``, ``ImageReward.score``):

1. ``preprocess``: ``Resize(224, BICUBIC)`` (PIL) -> ``CenterCrop(224)`` -> RGB -> ``ToTensor`` ->
   ``Normalize`` with the CLIP mean/std;
2. ``image_embeds = blip.visual_encoder(image)``: BLIP's timm-style ViT-L/16 (``create_vit('large', 224)``
   in BLIP's ``blip.py``: width 1024, depth 24, 16 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6,
   final ``norm``);
3. ``blip.tokenizer(prompt, padding='max_length', truncation=True, max_length=35)``: bert-base-uncased
   plus BLIP's ``init_tokenizer`` tokens (bos ``[DEC]``, additional ``[ENC]``; the score does not use them);
4. ``blip.text_encoder(input_ids, attention_mask, encoder_hidden_states=image_embeds,
   encoder_attention_mask=ones)``: BLIP's ``med.py`` BertModel (``med_config.json``, no pooler) whose
   cross-attention keys/values take ``encoder_width`` = the ViT width (``BLIP_Pretrain`` overrides the
   config's value with ``vision_width``);
5. ``mlp(last_hidden_state[:, 0, :])``: Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
   Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1) (no activations), then
   ``(r - 0.16717362830052426) / 1.0333394966054072``.

Here (2) is ``transformers.BlipVisionModel`` (same maths: fused qkv split as ``reshape(B, N, 3, H, d)``,
exact GELU, pre-norm blocks, ``post_layernorm`` = BLIP's final ``norm``) and (4) is
``transformers.BlipTextModel`` built with cross-attention (``is_decoder=True`` in the config creates the
``crossattention`` modules) and called with ``is_decoder=False`` (bidirectional mask), which is BLIP's
``mode='multimodal'``. Its parameter names are BLIP's ``med.py`` names, so the text encoder's keys map
one to one; the ViT's are renamed by :func:`convert_state_dict`.

Conversion happens on every load rather than into a cached safetensors copy: it is a pure rename (no
tensor is changed), so it costs nothing next to reading the 1.8 GB checkpoint, and a cache would double
the disk use, need write access to the weights folder (often a shared, read-only one) and could go stale
if the checkpoint were replaced. The checkpoint is read with ``torch.load(weights_only=True, mmap=True)``
(no pickle code runs; falls back to a plain read for legacy-format files) and the models are built on the
meta device and given the checkpoint's tensors, so nothing is initialised only to be overwritten.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel

log = logging.getLogger(__name__)

MEAN = 0.16717362830052426  # ImageReward.__init__: self.mean
STD = 1.0333394966054072  # ImageReward.__init__: self.std
MAX_LENGTH = 35  # ImageReward.score: tokenizer(..., max_length=35)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_LAYER_NORM_EPS = 1e-6  # BLIP vit.py: partial(nn.LayerNorm, eps=1e-6)
VIT_HEAD_DIM = 64  # BLIP's ViTs: base 768/12 heads, large 1024/16 heads
MLP_LINEAR_INDICES = (0, 2, 4, 6, 7)  # nn.Sequential positions of the Linear layers (Dropouts at 1, 3, 5)
MLP_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}

# Keys of ImageReward.pt that the score never uses (BLIP_Pretrain's contrastive projections, BLIP's
# persistent position_ids buffer, and the other BLIP heads should a checkpoint carry them).
IGNORED_KEY_PATTERNS = (
    r"blip\.vision_proj\..*",
    r"blip\.text_proj\..*",
    r"blip\.itm_head\..*",
    r"blip\.text_encoder\.embeddings\.position_ids",
    r"blip\.text_encoder\.pooler\..*",
)
CONSUMED_PREFIXES = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.layers.")

_VIT_RENAMES = (  # BLIP/timm ViT name (after "blip.visual_encoder.") -> transformers BlipVisionModel name
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
)


class ImageRewardMLP(nn.Module):
    """The official head (``ImageReward.MLP``), keys ``layers.{0,2,4,6,7}``; sizes default to 768-1024-128-64-16-1."""

    def __init__(self, sizes: tuple[int, ...] = (768, 1024, 128, 64, 16, 1)):
        super().__init__()
        if len(sizes) != len(MLP_LINEAR_INDICES) + 1:
            raise ValueError(f"the ImageReward MLP has {len(MLP_LINEAR_INDICES)} Linear layers; got sizes {sizes}")
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(nn.Linear(a, b))
            if i < 3:
                mods.append(nn.Dropout(MLP_DROPOUTS[len(mods)]))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def convert_state_dict(
    sd: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Split and rename the official state dict: ``(vision, text, mlp, ignored_keys)``.

    ``vision`` uses :class:`transformers.BlipVisionModel` names, ``text`` :class:`transformers.BlipTextModel`
    names (BLIP's own), ``mlp`` :class:`ImageRewardMLP` names. Keys matching :data:`IGNORED_KEY_PATTERNS`
    are returned in ``ignored_keys``; any other key fails, as it would mean a layout this code does not know.
    """
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    mlp: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in sd.items():
        if any(re.fullmatch(p, key) for p in IGNORED_KEY_PATTERNS):
            ignored.append(key)
        elif key.startswith("blip.visual_encoder."):
            sub = key[len("blip.visual_encoder.") :]
            for pattern, repl in _VIT_RENAMES:
                if re.fullmatch(pattern, sub):
                    vision[re.sub(pattern, repl, sub)] = value
                    break
            else:
                unknown.append(key)
        elif key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder.") :]] = value
        elif key.startswith("mlp."):
            mlp[key[len("mlp.") :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise FlowOPDError(
            f"imagereward_v1: {len(unknown)} checkpoint key(s) of an unknown layout, e.g. {unknown[0]!r}; "
            "expected THUDM/ImageReward's ImageReward.pt (blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*)"
        )
    return vision, text, mlp, sorted(ignored)


def vision_config_from(vision: dict[str, torch.Tensor]):
    """A :class:`transformers.BlipVisionConfig` read off the converted ViT tensors (ViT-L/16 at 224 for the official file)."""
    from transformers import BlipVisionConfig

    try:
        width = vision["embeddings.class_embedding"].shape[-1]
        patch = vision["embeddings.patch_embedding.weight"].shape[-1]
        positions = vision["embeddings.position_embedding"].shape[1]
        mlp_hidden = vision["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise FlowOPDError(
            f"imagereward_v1: checkpoint has no ViT tensor for {exc.args[0]!r}; is it THUDM/ImageReward's ImageReward.pt?"
        ) from None
    depth = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid != positions - 1 or width % VIT_HEAD_DIM:
        raise FlowOPDError(f"imagereward_v1: unexpected ViT shapes (width {width}, {positions} positions)")
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=mlp_hidden,
        num_hidden_layers=depth,
        num_attention_heads=width // VIT_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VIT_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )


def text_config_from(med_config: dict[str, Any], vision_width: int):
    """A :class:`transformers.BlipTextConfig` from BLIP's ``med_config.json``, cross-attending to ``vision_width`` features."""
    from transformers import BlipTextConfig

    cfg = BlipTextConfig(
        vocab_size=med_config["vocab_size"],
        hidden_size=med_config["hidden_size"],
        intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        bos_token_id=None,  # generation ids of the captioning decoder: unused by the encoder (and not in a tiny vocab)
        eos_token_id=None,
        sep_token_id=None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        encoder_hidden_size=vision_width,  # BLIP_Pretrain: encoder_config.encoder_width = vision_width
        is_decoder=True,  # builds the crossattention modules; forward runs with is_decoder=False
    )
    cfg._attn_implementation = "eager"  # BlipText's attention adds the mask to the scores: it needs the additive form
    return cfg


def load_tokenizer(path: Path):
    """bert-base-uncased with BLIP's ``init_tokenizer`` additions (bos ``[DEC]``, additional special ``[ENC]``)."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(path))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """The official ``_transform(size)`` on one uint8 ``[H, W, 3]`` image -> float ``[3, size, size]``.

    ``Resize(size, BICUBIC)`` on a PIL image resizes the short side to ``size`` and the long side to
    ``int(size * long / short)`` with PIL's bicubic filter; ``CenterCrop`` offsets by
    ``int(round((dim - size) / 2))`` (torchvision's rules, done here in PIL to need no torchvision).
    """
    from PIL import Image

    pil = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """``ImageReward.pt`` as a flat state dict, read with ``weights_only=True`` (memory-mapped where the format allows)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise FlowOPDError(f"imagereward_v1: cannot read {path}: {str(exc).splitlines()[0]}") from None
        sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) torch.save format
    except Exception as exc:
        raise FlowOPDError(f"imagereward_v1: cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict) and not any(k.startswith("blip.") for k in sd):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise FlowOPDError(f"imagereward_v1: {path} does not hold a state dict")
    return sd


class ImageRewardV1(RewardModel):
    """ImageReward v1 (THUDM/ImageReward): BLIP ViT-L/16 + BERT cross-attention text encoder + MLP, official z-score.

    raw = ``(mlp(text_encoder(ids, encoder_hidden_states=vit(image))[:, 0, :]) - 0.16717362830052426)
    / 1.0333394966054072``; the training scale is the raw value (SPEC section 7).
    """

    name = "imagereward_v1"
    version = "1"
    description = "ImageReward v1: BLIP ViT-L/16 + BERT cross-attention + MLP, z-normalised (r - 0.16717) / 1.03334"
    weight_sets = ("imagereward_v1", "bert-base-uncased-tokenizer")

    def load(self) -> None:
        from accelerate import init_empty_weights
        from transformers import BlipTextModel, BlipVisionModel

        root = self.weight_path("imagereward_v1")
        tok_root = self.weight_path("bert-base-uncased-tokenizer")
        try:
            med_config = json.loads((root / "med_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise FlowOPDError(f"imagereward_v1: cannot read {root / 'med_config.json'}: {exc}") from None
        vision_sd, text_sd, mlp_sd, ignored = convert_state_dict(read_checkpoint(root / "ImageReward.pt"))

        vision_cfg = vision_config_from(vision_sd)
        text_cfg = text_config_from(med_config, vision_cfg.hidden_size)
        linear_w = [mlp_sd.get(f"layers.{i}.weight") for i in MLP_LINEAR_INDICES]
        if any(w is None for w in linear_w):
            raise FlowOPDError(f"imagereward_v1: checkpoint lacks MLP layers mlp.layers.{{{','.join(map(str, MLP_LINEAR_INDICES))}}}")
        mlp_sizes = (linear_w[0].shape[1], *(w.shape[0] for w in linear_w))

        with init_empty_weights(include_buffers=False):
            vision = BlipVisionModel(vision_cfg)
            text = BlipTextModel(text_cfg, add_pooling_layer=False)
            mlp = ImageRewardMLP(mlp_sizes)
        for label, module, sd in (("blip.visual_encoder", vision, vision_sd), ("blip.text_encoder", text, text_sd), ("mlp", mlp, mlp_sd)):
            missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
            if missing or unexpected:
                what = f"missing {label}.{missing[0]}" if missing else f"unexpected {label}.{unexpected[0]}"
                raise FlowOPDError(
                    f"imagereward_v1: checkpoint does not match the model ({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
                )

        self.tokenizer = load_tokenizer(tok_root)
        if len(self.tokenizer) > text_cfg.vocab_size:
            raise FlowOPDError(
                f"imagereward_v1: the tokenizer has {len(self.tokenizer)} tokens but med_config.json's vocab_size is {text_cfg.vocab_size}"
            )
        self.vision = vision.float().to(self.device).eval().requires_grad_(False)
        self.text_encoder = text.float().to(self.device).eval().requires_grad_(False)
        self.mlp = mlp.float().to(self.device).eval().requires_grad_(False)
        self.image_size = vision_cfg.image_size
        self.ignored_keys = ignored
        self.consumed_keys = len(vision_sd) + len(text_sd) + len(mlp_sd)
        if ignored:
            log.debug("imagereward_v1: ignored %d checkpoint keys the score does not use: %s", len(ignored), ignored)

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_embeds [B, 1+N, width], txt_features [B, hidden])``: steps 2-4 of the official score."""
        image_embeds = self.vision(pixel_values=pixel_values.to(self.device)).last_hidden_state
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt").to(self.device)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = self.text_encoder(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,
        )
        return image_embeds, out.last_hidden_state[:, 0, :].float()

    def _score(self, images, prompts, metadata):
        pixels = torch.stack([preprocess(img, self.image_size) for img in images])
        _, txt = self.features(pixels, list(prompts))
        with torch.no_grad():
            r = self.mlp(txt).squeeze(-1)
        z = ((r - MEAN) / STD).cpu()
        n_tokens = [len(ids) for ids in self.tokenizer(list(prompts), truncation=False).input_ids]
        details = [{"mlp": float(v), "truncated": n > MAX_LENGTH} for v, n in zip(r.cpu().tolist(), n_tokens)]
        return z.tolist(), details
