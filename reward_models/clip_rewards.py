"""CLIP-based rewards: PickScore v1, CLIPScore (ViT-L/14) and the LAION aesthetic predictor v2.

All three run on the core install (``transformers`` CLIP, no ``open_clip``,
no torchvision): images go through the PIL-backed ``CLIPImageProcessor``
read from the weight set's ``preprocessor_config.json`` and text through the
tokenizer in its ``tokenizer.json``.

Scales (SPEC section 7):

=====================  ==============================================  ===========
reward                 raw                                             training
=====================  ==============================================  ===========
``pickscore_v1``       ``logit_scale.exp() * cos(text, image)``        raw / 26
``clipscore``          ``logits_per_image`` diagonal                   raw / 30
``aesthetic_laion_v2`` LAION MLP(L2-normalised CLIP-L/14 image emb.)   raw / 10
=====================  ==============================================  ===========

The helpers here (:func:`load_clip_tokenizer`, :func:`load_clip_image_processor`,
:func:`projected_features`) are shared with :mod:`flowopd.reward_models.hps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel

CONTEXT_LENGTH = 77  # CLIP's text context (open_clip and transformers alike)


# ------------------------------------------------------------------ shared helpers


def load_clip_tokenizer(path: str | Path):
    """The CLIP BPE tokenizer of a folder with ``tokenizer.json`` (``CLIPTokenizerFast`` on transformers 4.x, ``CLIPTokenizer`` on 5.x)."""
    import transformers

    cls = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
    return cls.from_pretrained(str(path))


def load_clip_image_processor(path: str | Path):
    """The PIL-backed CLIP image processor of a folder with ``preprocessor_config.json``.

    transformers 5 names the PIL implementation ``CLIPImageProcessorPil`` (its
    ``CLIPImageProcessor`` needs torchvision); on 4.x ``CLIPImageProcessor`` is
    the PIL one. PIL bicubic resizing is what the reference pipelines use
    (PickScore's ``AutoProcessor`` on 4.x; open_clip's torchvision transforms on PIL images).
    """
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(str(path))


def projected_features(out: Any) -> torch.Tensor:
    """``get_image_features``/``get_text_features`` output -> the projected embedding.

    transformers 4.x returns the tensor; 5.x returns a model output whose
    ``pooler_output`` holds the projected embedding.
    """
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def load_clip_model(path: str | Path, device: torch.device):
    """A ``transformers`` ``CLIPModel`` from a folder (config.json + model.safetensors), float32, eval mode, on ``device``."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(path)).float().to(device).eval()


def pixel_values(processor, images: np.ndarray | Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 ``[B,H,W,3]`` (or a list of ``[H,W,3]``) -> the processor's normalised ``[B,3,S,S]`` float tensor on ``device``."""
    out = processor(images=list(images), return_tensors="pt", input_data_format="channels_last")
    return out["pixel_values"].to(device=device, dtype=torch.float32)


def text_inputs(tokenizer, prompts: Sequence[str], device: torch.device, padding: bool | str = True) -> dict[str, torch.Tensor]:
    """Tokenise like the reference code: ``truncation=True, max_length=77``; ``padding=True`` pads to the longest prompt."""
    enc = tokenizer(list(prompts), padding=padding, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt")
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}


def image_embeddings(model, processor, images: np.ndarray | Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """L2-normalised projected image embeddings ``[B, D]`` of a ``transformers`` CLIP."""
    emb = projected_features(model.get_image_features(pixel_values=pixel_values(processor, images, device)))
    return emb / emb.norm(dim=-1, keepdim=True)


def text_embeddings(model, tokenizer, prompts: Sequence[str], device: torch.device, padding: bool | str = True) -> torch.Tensor:
    """L2-normalised projected text embeddings ``[B, D]`` of a ``transformers`` CLIP."""
    emb = projected_features(model.get_text_features(**text_inputs(tokenizer, prompts, device, padding=padding)))
    return emb / emb.norm(dim=-1, keepdim=True)


class _CLIPReward(RewardModel):
    """A ``transformers`` CLIP with its tokenizer and image processor (subclasses pick the weight sets)."""

    model_set: str = ""
    processor_set: str = ""

    def load(self) -> None:
        model_dir = self.weight_path(self.model_set)
        proc_dir = self.weight_path(self.processor_set)
        self.tokenizer = load_clip_tokenizer(proc_dir)
        self.processor = load_clip_image_processor(proc_dir)
        self.model = load_clip_model(model_dir, self.device)

    def image_embeddings(self, images) -> torch.Tensor:
        """L2-normalised projected image embeddings ``[B, D]``."""
        return image_embeddings(self.model, self.processor, images, self.device)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings ``[B, D]``."""
        return text_embeddings(self.model, self.tokenizer, prompts, self.device)


# ------------------------------------------------------------------ PickScore


class PickScore(_CLIPReward):
    """PickScore v1 (Kirstain et al. 2023, "Pick-a-Pic", arXiv:2305.01569): CLIP-H fine-tuned on human preferences.

    Follows the model card's usage code (huggingface.co/yuvalkirstain/PickScore_v1):
    the model is ``yuvalkirstain/PickScore_v1``, the processor is
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s; image and text embeddings
    (``get_image_features`` / ``get_text_features``) are L2-normalised and

        raw = model.logit_scale.exp() * (text_emb . image_emb)

    for each (image, its prompt) pair (the card's ``(text_embs @ image_embs.T)[0]``
    for one prompt; here the diagonal, one prompt per image). Raw scores sit
    around 18-24; the training scale is ``raw / 26``.
    """

    name = "pickscore_v1"
    version = "1"
    description = "PickScore v1 (CLIP-H fine-tuned on Pick-a-Pic): logit_scale.exp() * cos(text, image); trained at /26"
    weight_sets = ("pickscore_v1", "clip-vit-h-14-processor")
    model_set = "pickscore_v1"
    processor_set = "clip-vit-h-14-processor"

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 26.0

    def _score(self, images, prompts, metadata):
        with torch.inference_mode():
            cos = (self.text_embeddings(prompts) * self.image_embeddings(images)).sum(dim=-1)
            raw = self.model.logit_scale.exp() * cos
        return raw.float().cpu().tolist(), [{"cosine": float(c)} for c in cos.float().cpu().tolist()]


# ------------------------------------------------------------------ CLIPScore


class CLIPScore(_CLIPReward):
    """CLIPScore with OpenAI CLIP ViT-L/14 (``openai/clip-vit-large-patch14``).

    raw = the diagonal of ``CLIPModel(...).logits_per_image`` with one prompt
    per image, i.e. ``logit_scale.exp() * cos(image, text)`` with the model's
    own ``logit_scale`` (exp = 100 for OpenAI CLIP). This is the variant the
    SPEC names (section 7), not Hessel et al.'s ``2.5 * max(cos, 0)``.
    Training scale: ``raw / 30``.
    """

    name = "clipscore"
    version = "1-openai-vit-l-14"
    description = "CLIPScore: CLIP ViT-L/14 logits_per_image diagonal (100 * cos); trained at /30"
    weight_sets = ("clip-vit-large-patch14",)
    model_set = processor_set = "clip-vit-large-patch14"

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 30.0

    def _score(self, images, prompts, metadata):
        with torch.inference_mode():
            out = self.model(
                pixel_values=pixel_values(self.processor, images, self.device), **text_inputs(self.tokenizer, prompts, self.device)
            )
            raw = out.logits_per_image.diagonal()
            cos = raw / self.model.logit_scale.exp()
        return raw.float().cpu().tolist(), [{"cosine": float(c)} for c in cos.float().cpu().tolist()]


class CLIPScoreViTB32(CLIPScore):
    """CLIPScore with OpenAI CLIP ViT-B/32 (``openai/clip-vit-base-patch32``), the model T2I-CompBench's non-spatial
    metric uses (its script reports the cosine, ``details["cosine"]`` = raw / 100)."""

    name = "clipscore@vit-b-32"
    version = "1-openai-vit-b-32"
    description = "CLIPScore with CLIP ViT-B/32 (T2I-CompBench non-spatial): logits_per_image diagonal (100 * cos); /30"
    weight_sets = ("clip-vit-base-patch32",)
    model_set = processor_set = "clip-vit-base-patch32"


# ------------------------------------------------------------------ LAION aesthetic predictor


class AestheticMLP(nn.Module):
    """The LAION improved aesthetic predictor head (github.com/christophschuhmann/improved-aesthetic-predictor, ``simple_inference.py``).

    ``Linear(768,1024) Dropout(0.2) Linear(1024,128) Dropout(0.2) Linear(128,64)
    Dropout(0.1) Linear(64,16) Linear(16,1)`` -- no activations -- under
    ``self.layers`` (state-dict keys ``layers.{0,2,4,6,7}.*``), as in TRL's DDPO
    example that published ``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth``
    (``sac+logos+ava1-l14-linearMSE.pth``). Dropout is inactive in eval mode.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        return self.layers(embed)


class AestheticLaionV2(_CLIPReward):
    """LAION aesthetic predictor v2 on CLIP ViT-L/14 image embeddings (prompt-free).

    raw = ``AestheticMLP(e / ||e||)`` where ``e = CLIPModel.get_image_features``
    of ``openai/clip-vit-large-patch14`` (the improved-aesthetic-predictor's
    ``normalized(model.encode_image(...))`` and TRL's DDPO ``AestheticScorer``).
    Raw scores lie roughly in 1-10; the training scale is ``raw / 10``.
    The MLP is read with ``torch.load(weights_only=True)``.
    """

    name = "aesthetic_laion_v2"
    version = "1-sac-logos-ava1-l14-mse"
    description = "LAION aesthetic predictor v2 (MLP on L2-normalised CLIP ViT-L/14 image embeddings), raw ~1-10; trained at /10"
    weight_sets = ("clip-vit-large-patch14", "aesthetic-mlp-laion-v2")
    model_set = processor_set = "clip-vit-large-patch14"
    mlp_file = "aesthetic-model.pth"

    def load(self) -> None:
        mlp_path = self.weight_path("aesthetic-mlp-laion-v2") / self.mlp_file
        super().load()
        state = torch.load(mlp_path, weights_only=True, map_location="cpu")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        dim = self.model.config.projection_dim
        mlp = AestheticMLP(dim)
        try:
            mlp.load_state_dict(state)
        except RuntimeError as exc:
            raise FlowOPDError(
                f"{self.name}: {mlp_path} is not a LAION aesthetic MLP state dict for {dim}-d CLIP embeddings ({exc})"
            ) from None
        self.mlp = mlp.float().to(self.device).eval()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() / 10.0

    def _score(self, images, prompts, metadata):
        with torch.inference_mode():
            raw = self.mlp(self.image_embeddings(images)).squeeze(-1)
        return raw.float().cpu().tolist(), [{} for _ in range(len(raw))]
