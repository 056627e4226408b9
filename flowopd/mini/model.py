"""The mini base model: a tiny pixel-space SD3 transformer with a word-level CLIP text encoder.

The transformer is diffusers' ``SD3Transformer2DModel`` (the very class of
SD3.5, so LoRA targets, the sampler and the trainer are the same code) and the
text encoder is transformers' ``CLIPTextModelWithProjection`` over the mini
world's vocabulary: per-token states feed joint attention, the projected EOS
state is the pooled vector, as in SD3. Everything saves with
``save_pretrained`` and loads with ``from_pretrained`` in a diffusers-style
folder (``transformer/``, ``text_encoder/``, ``tokenizer/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from flowopd.backbone import PromptEmbeds
from flowopd.mini import world

MAX_TOKENS = 16
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
TRANSFORMER_CONFIG = dict(
    sample_size=world.SIZE,
    patch_size=4,
    in_channels=3,
    out_channels=3,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=128,
    caption_projection_dim=128,  # must equal heads * head_dim
    pooled_projection_dim=128,
    pos_embed_max_size=world.SIZE // 4,  # the token grid, so the sin-cos grid is not centre-cropped
    qk_norm="rms_norm",
)
TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    projection_dim=128,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,  # not 2: transformers then pools at the first EOS, not at the argmax id
)


def vocabulary() -> list[str]:
    """Every word the mini world's prompts use, plus digits and the quote mark."""
    words = {"a", "an", "photo", "of", "and", "the", "text", "on", "background", "left", "right", "above", "below", '"'}
    words |= set(world.SHAPES) | set(world.PLURALS.values()) | set(world.COLORS) | set(world.BACKGROUNDS)
    words |= set(world.NUMBERS.values()) | set(world.SIZES_WORDS) | set("0123456789")
    return SPECIAL_TOKENS + sorted(words)


def build_tokenizer():
    """A word-level fast tokenizer: lower-cased, digits split one by one, [BOS] ... [EOS], padded to 16."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=MAX_TOKENS,
    )


def _read_weights(folder: Path, load: Any) -> Any:
    """``load(folder)``, a truncated or corrupt safetensors file there named in one line."""
    from flowopd.errors import naming_corrupt_weights

    with naming_corrupt_weights(next(folder.glob("*.safetensors"), folder)):
        return load(folder)


class MiniBackbone(torch.nn.Module):
    """Tokenizer + text encoder + pixel-space SD3 transformer (no VAE: x is the image in [-1, 1])."""

    def __init__(self, transformer, text_encoder, tokenizer):
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.latent_shape = (3, world.SIZE, world.SIZE)

    # -------------------------------------------------------------- building / io

    @classmethod
    def random(cls, seed: int = 0) -> MiniBackbone:
        """A freshly initialised model (``proj_out`` zeroed, so it starts by predicting zero velocity)."""
        from diffusers import SD3Transformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        tokenizer = build_tokenizer()
        torch.manual_seed(seed)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
        transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG)
        torch.nn.init.zeros_(transformer.proj_out.weight)
        torch.nn.init.zeros_(transformer.proj_out.bias)
        return cls(transformer, text_encoder, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> MiniBackbone:
        """Load from a folder written by :meth:`save_pretrained` (the shipped base is one)."""
        from diffusers import SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

        path = Path(path)
        for sub in ("transformer", "text_encoder", "tokenizer"):
            if not (path / sub).is_dir():
                raise FileNotFoundError(f"{path} is not a mini model folder (no {sub}/); pass a folder written by `flowopd mini pretrain`")
        transformer = _read_weights(path / "transformer", lambda p: SD3Transformer2DModel.from_pretrained(p, torch_dtype=dtype))
        text_encoder = _read_weights(path / "text_encoder", lambda p: CLIPTextModelWithProjection.from_pretrained(p, dtype=dtype))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
        model = cls(transformer, text_encoder, tokenizer)
        model.eval()
        return model

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
        """Write ``transformer/``, ``text_encoder/``, ``tokenizer/`` (safetensors) and ``model_info.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        transformer, text_encoder = self.transformer, self.text_encoder
        if dtype is not None:
            import copy

            transformer = copy.deepcopy(transformer).to(dtype)
            text_encoder = copy.deepcopy(text_encoder).to(dtype)
        transformer.save_pretrained(path / "transformer", safe_serialization=True)
        text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        (path / "model_info.json").write_text(json.dumps({"kind": "mini", **(extra or {})}, indent=2) + "\n")

    # -------------------------------------------------------------- backbone interface

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Token states and pooled projection of each prompt; ``""`` is the unconditional branch."""
        batch = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").to(
            self.device
        )
        out = self.text_encoder(input_ids=batch.input_ids)
        return PromptEmbeds(out.last_hidden_state, out.text_embeds)

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` outside the vocabulary (they encode as [UNK])."""
        unk = self.tokenizer.unk_token_id
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        pieces = self.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(prompt.lower())
        return [w for (w, _), i in zip(pieces, ids) if i == unk]

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds, transformer: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """v(x, sigma, c); the transformer's timestep input is ``sigma * 1000``; ``transformer`` overrides ours (a DDP wrapper)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.dtype)
        return (transformer or self.transformer)(
            hidden_states=x,
            encoder_hidden_states=cond.tokens.to(x.dtype),
            pooled_projections=cond.pooled.to(x.dtype),
            timestep=sigma * 1000.0,
        ).sample

    @staticmethod
    def decode(x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> images in [0, 1]."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def encode_images(images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the model's space [-1, 1]."""
        return images * 2.0 - 1.0
