"""HPS v2 / v2.1 (Wu et al. 2023, "Human Preference Score v2", arXiv:2306.09341): open_clip ViT-H-14 fine-tuned on HPD.

The score is the official one (github.com/tgxs002/HPSv2, ``hpsv2/img_score.py``)::

    outputs = model(image, text)          # open_clip, output_dict=True: L2-normalised features
    hps = diag(image_features @ text_features.T)

i.e. ``raw = cos(image, text)`` for each image and its prompt (about 0.2-0.35).
Benchmarks and the HPSv2 paper report ``100 * raw``; we keep raw as the
cosine (``details["score_x100"]`` carries the benchmark number) and train on
it as is.

Two backends compute the same function:

- ``open_clip``: the official path: ``open_clip.create_model_and_transforms("ViT-H-14")``,
  the checkpoint's ``state_dict`` loaded strictly, ``open_clip.get_tokenizer("ViT-H-14")``
  and open_clip's validation transform. Needs the ``openclip`` extra (it pulls torchvision).
- ``transformers``: the checkpoint converted once by :func:`convert_open_clip_state_dict`
  into a ``transformers`` ``CLIPModel`` (cached as safetensors under
  ``<hps weight folder>/transformers/<checkpoint stem>/``, written atomically),
  with the tokenizer and PIL image processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
  (weight set ``clip-vit-h-14-processor``; open_clip ViT-H-14 was trained with
  the same BPE vocabulary, bicubic resize of the short side to 224, centre crop
  and OpenAI mean/std). Runs on the core install.

``backend="auto"`` (the default) takes open_clip when it imports, else transformers.
Checkpoints are read with ``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.clip_rewards import (
    CONTEXT_LENGTH,
    image_embeddings,
    load_clip_image_processor,
    load_clip_model,
    load_clip_tokenizer,
    text_embeddings,
)

BACKENDS = ("auto", "open_clip", "transformers")
CONVERTER_VERSION = 1  # bump when the conversion changes, so cached conversions are redone

# open_clip's ViT-H-14.json: vision head_width 80 (1280 / 80 = 16 heads), text heads 16 (1024 / 16 = 64 per head)
VISION_HEAD_WIDTH = 80
TEXT_HEAD_WIDTH = 64

# Non-parameter entries an open_clip state dict may carry (buffers of older versions); not weights.
_IGNORED_KEYS = ("attn_mask", "visual.attn_mask")


# ------------------------------------------------------------------ configuration


def vit_h_14_config():
    """The ``transformers`` ``CLIPConfig`` of open_clip ViT-H-14 (as laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config.json)."""
    return clip_config(
        vision=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, patch_size=14, image_size=224),
        text=dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            vocab_size=49408,
            max_position_embeddings=77,
        ),
        projection_dim=1024,
    )


def clip_config(vision: Mapping[str, int], text: Mapping[str, int], projection_dim: int):
    """A ``CLIPConfig`` for an open_clip CLIP: exact GELU (open_clip's ``nn.GELU``, not quick_gelu), LayerNorm eps 1e-5.

    ``eos_token_id=2`` selects transformers' legacy pooling, ``input_ids.argmax(-1)``,
    which is exactly open_clip's (``x[arange, text.argmax(dim=-1)]``: the EOT token has the largest id).
    """
    from transformers import CLIPConfig

    common = dict(hidden_act="gelu", layer_norm_eps=1e-5, attention_dropout=0.0)
    return CLIPConfig(
        vision_config={**common, "num_channels": 3, **vision},
        text_config={**common, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, **text},
        projection_dim=projection_dim,
    )


def config_from_open_clip_state_dict(
    sd: Mapping[str, torch.Tensor], vision_head_width: int = VISION_HEAD_WIDTH, text_head_width: int = TEXT_HEAD_WIDTH
):
    """Infer the ``CLIPConfig`` of an open_clip ViT CLIP from its state dict's shapes.

    Widths, depths, MLP sizes, patch and image size, vocabulary, context and
    projection come from the tensors; head counts are ``width / head_width``
    (open_clip ViT-H-14: 1280/80 = 16 vision heads, 1024/64 = 16 text heads).
    """

    def depth(prefix: str) -> int:
        ids = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
        if not ids or ids != set(range(len(ids))):
            raise FlowOPDError(f"not an open_clip CLIP state dict: no contiguous {prefix}N.* blocks")
        return len(ids)

    try:
        conv = sd["visual.conv1.weight"]
        v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
        n_pos = int(sd["visual.positional_embedding"].shape[0])
        grid = math.isqrt(n_pos - 1)
        vocab, t_width = (int(s) for s in sd["token_embedding.weight"].shape)
        context = int(sd["positional_embedding"].shape[0])
        projection = int(sd["visual.proj"].shape[1])
        v_mlp = int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
        t_mlp = int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    except KeyError as exc:
        raise FlowOPDError(f"not an open_clip ViT CLIP state dict: {exc.args[0]!r} missing") from None
    if grid * grid != n_pos - 1:
        raise FlowOPDError(f"visual.positional_embedding has {n_pos} rows, not 1 + a square grid")
    for width, head_width, tower in ((v_width, vision_head_width, "vision"), (t_width, text_head_width, "text")):
        if width % head_width:
            raise FlowOPDError(f"{tower} width {width} is not a multiple of the head width {head_width}")
    return clip_config(
        vision=dict(
            hidden_size=v_width,
            num_hidden_layers=depth("visual.transformer.resblocks."),
            num_attention_heads=v_width // vision_head_width,
            intermediate_size=v_mlp,
            patch_size=patch,
            image_size=grid * patch,
        ),
        text=dict(
            hidden_size=t_width,
            num_hidden_layers=depth("transformer.resblocks."),
            num_attention_heads=t_width // text_head_width,
            intermediate_size=t_mlp,
            vocab_size=vocab,
            max_position_embeddings=context,
        ),
        projection_dim=projection,
    )


# ------------------------------------------------------------------ conversion


def convert_open_clip_state_dict(sd: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """open_clip CLIP (ViT image tower, default text tower) state dict -> ``transformers`` ``CLIPModel`` state dict.

    A pure function: tensors keep their dtype, nothing is loaded or saved.
    Layouts: open_clip ``model.py``/``transformer.py`` (``VisionTransformer``,
    ``TextTransformer``, ``ResidualAttentionBlock`` with ``nn.MultiheadAttention``)
    and transformers ``modeling_clip.py``. Mapping:

    - each block: ``ln_1``/``ln_2`` -> ``layer_norm1``/``layer_norm2``; ``attn.in_proj_weight``/``in_proj_bias``
      (q, k, v stacked on dim 0) -> ``self_attn.{q,k,v}_proj``; ``attn.out_proj`` -> ``self_attn.out_proj``;
      ``mlp.c_fc``/``mlp.c_proj`` -> ``mlp.fc1``/``mlp.fc2``;
    - vision: ``conv1`` -> ``embeddings.patch_embedding``, ``class_embedding``, ``positional_embedding``
      -> ``embeddings.position_embedding``, ``ln_pre`` -> ``pre_layrnorm`` (sic), ``ln_post`` -> ``post_layernorm``,
      ``proj`` ``[width, dim]`` -> ``visual_projection.weight`` ``[dim, width]`` (transposed);
    - text: ``token_embedding``, ``positional_embedding``, ``ln_final`` -> ``final_layer_norm``,
      ``text_projection`` ``[width, dim]`` -> ``text_projection.weight`` (transposed);
    - ``logit_scale`` as is.

    Raises :class:`FlowOPDError` on a key it does not use (other than old ``attn_mask`` buffers),
    a missing key, or a shape that does not match ``config``.
    """
    conv = _OpenClipToCLIP({k.removeprefix("module."): v for k, v in sd.items()})
    conv.vision(config.vision_config, config.projection_dim)
    conv.text(config.text_config, config.projection_dim)
    conv.put("logit_scale", conv.take("logit_scale").reshape(()), ())
    unused = sorted(set(conv.src) - conv.used - set(_IGNORED_KEYS))
    if unused:
        raise FlowOPDError(f"open_clip state dict has {len(unused)} key(s) the conversion does not know, e.g. {unused[0]!r}")
    return conv.out


class _OpenClipToCLIP:
    """The conversion's bookkeeping: the source keys taken, the target tensors put (shape-checked against the config)."""

    def __init__(self, src: dict[str, torch.Tensor]):
        self.src, self.used, self.out = src, set(), {}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.src:
            raise FlowOPDError(f"open_clip state dict has no {key!r}; is it an open_clip ViT CLIP checkpoint matching the config?")
        self.used.add(key)
        return self.src[key]

    def put(self, key: str, value: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(value.shape) != shape:
            raise FlowOPDError(f"{key}: shape {tuple(value.shape)} does not match the config's {shape}")
        self.out[key] = value.contiguous()

    def layer_norm(self, src_key: str, dst_key: str, d: int) -> None:
        self.put(dst_key + ".weight", self.take(src_key + ".weight"), (d,))
        self.put(dst_key + ".bias", self.take(src_key + ".bias"), (d,))

    def blocks(self, src_prefix: str, dst_prefix: str, cfg) -> None:
        d, mlp = cfg.hidden_size, cfg.intermediate_size
        for i in range(cfg.num_hidden_layers):
            s, t = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
            w, b = self.take(s + "attn.in_proj_weight"), self.take(s + "attn.in_proj_bias")
            if tuple(w.shape) != (3 * d, d) or tuple(b.shape) != (3 * d,):
                raise FlowOPDError(f"{s}attn.in_proj_weight: shape {tuple(w.shape)} is not (3*{d}, {d})")
            for name, wp, bp in zip(("q", "k", "v"), w.chunk(3, dim=0), b.chunk(3, dim=0)):
                self.put(f"{t}self_attn.{name}_proj.weight", wp.clone(), (d, d))
                self.put(f"{t}self_attn.{name}_proj.bias", bp.clone(), (d,))
            self.put(f"{t}self_attn.out_proj.weight", self.take(s + "attn.out_proj.weight"), (d, d))
            self.put(f"{t}self_attn.out_proj.bias", self.take(s + "attn.out_proj.bias"), (d,))
            self.layer_norm(s + "ln_1", t + "layer_norm1", d)
            self.layer_norm(s + "ln_2", t + "layer_norm2", d)
            self.put(f"{t}mlp.fc1.weight", self.take(s + "mlp.c_fc.weight"), (mlp, d))
            self.put(f"{t}mlp.fc1.bias", self.take(s + "mlp.c_fc.bias"), (mlp,))
            self.put(f"{t}mlp.fc2.weight", self.take(s + "mlp.c_proj.weight"), (d, mlp))
            self.put(f"{t}mlp.fc2.bias", self.take(s + "mlp.c_proj.bias"), (d,))

    def vision(self, vc, dim: int) -> None:
        vd, n_patches = vc.hidden_size, (vc.image_size // vc.patch_size) ** 2
        patch = (vd, vc.num_channels, vc.patch_size, vc.patch_size)
        self.put("vision_model.embeddings.patch_embedding.weight", self.take("visual.conv1.weight"), patch)
        self.put("vision_model.embeddings.class_embedding", self.take("visual.class_embedding"), (vd,))
        self.put("vision_model.embeddings.position_embedding.weight", self.take("visual.positional_embedding"), (n_patches + 1, vd))
        self.layer_norm("visual.ln_pre", "vision_model.pre_layrnorm", vd)
        self.blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.", vc)
        self.layer_norm("visual.ln_post", "vision_model.post_layernorm", vd)
        self.put("visual_projection.weight", self.take("visual.proj").t(), (dim, vd))

    def text(self, tc, dim: int) -> None:
        td = tc.hidden_size
        self.put("text_model.embeddings.token_embedding.weight", self.take("token_embedding.weight"), (tc.vocab_size, td))
        self.put("text_model.embeddings.position_embedding.weight", self.take("positional_embedding"), (tc.max_position_embeddings, td))
        self.blocks("transformer.resblocks.", "text_model.encoder.layers.", tc)
        self.layer_norm("ln_final", "text_model.final_layer_norm", td)
        if "text_projection.weight" in self.src:  # open_clip text towers with a Linear projection store it transposed already
            if "text_projection.bias" in self.src:
                raise FlowOPDError("text_projection has a bias; transformers' CLIPModel has none")
            self.put("text_projection.weight", self.take("text_projection.weight"), (dim, td))
        else:
            self.put("text_projection.weight", self.take("text_projection").t(), (dim, td))


def read_hps_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The open_clip state dict of an HPS checkpoint (``{"state_dict": ...}``), read with ``weights_only=True``; a ``module.`` prefix is dropped."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with arbitrary objects is refused, never executed
        raise FlowOPDError(f"cannot read {path} as a weights-only checkpoint: {str(exc).splitlines()[0]}") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FlowOPDError(f"{path} holds no state dict of tensors (expected {{'state_dict': {{name: tensor}}}})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _fingerprint(ckpt: Path) -> dict[str, Any]:
    st = ckpt.stat()
    return {"source": ckpt.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "converter": CONVERTER_VERSION}


def _write_converted(ckpt: Path, folder: Path) -> None:
    from safetensors.torch import save_file

    sd = read_hps_state_dict(ckpt)
    config = config_from_open_clip_state_dict(sd)
    hf = convert_open_clip_state_dict(sd, config)
    del sd
    seen: set[int] = set()
    for k, v in hf.items():  # safetensors refuses tensors that share storage
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            hf[k] = v.clone()
        seen.add(ptr)
    config.save_pretrained(str(folder))
    save_file(hf, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # written last: its presence marks a complete conversion
    (folder / "flowopd_conversion.json").write_text(json.dumps(_fingerprint(ckpt), indent=2) + "\n")


def converted_model_dir(ckpt: str | Path) -> tuple[Path, bool]:
    """The ``transformers`` conversion of an HPS checkpoint: ``(folder, is_temporary)``.

    The conversion is cached in ``<checkpoint folder>/transformers/<checkpoint stem>/``
    and reused while the checkpoint's size and mtime are unchanged. It is
    written into a temporary sibling folder and renamed into place, so a
    crash or a concurrent conversion never leaves a half-written model. When
    the weight folder is read-only the conversion goes to a temporary folder
    that the caller deletes after loading.
    """
    ckpt = Path(ckpt)
    root = ckpt.parent / "transformers"
    target = root / ckpt.stem
    marker = target / "flowopd_conversion.json"

    def valid() -> bool:
        try:
            return json.loads(marker.read_text()) == _fingerprint(ckpt) and (target / "model.safetensors").is_file()
        except (OSError, ValueError):
            return False

    if valid():
        return target, False
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{ckpt.stem}.", suffix=".tmp"))
    except OSError:  # read-only weights: convert for this run only
        tmp = Path(tempfile.mkdtemp(prefix="flowopd-hps-"))
        try:
            _write_converted(ckpt, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp, True
    try:
        _write_converted(ckpt, tmp)
        if valid():  # another process finished the same conversion meanwhile: keep theirs
            return target, False
        if target.exists():  # a stale conversion (the checkpoint changed): move it aside, then swap
            stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{ckpt.stem}.", suffix=".old"))
            os.replace(target, stale / "model")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not valid():  # lost a race: theirs is in place and valid; anything else is a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, False


def open_clip_importable() -> tuple[bool, str | None]:
    """Whether ``import open_clip`` works here (it imports torchvision, which can fail to load), and why not."""
    try:
        import open_clip  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision's RuntimeError/OSError on a mismatched torch
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return True, None


# ------------------------------------------------------------------ the rewards


class HPSv2(RewardModel):
    """HPS v2: ``raw = cos(image_features, text_features)`` of the HPS-fine-tuned open_clip ViT-H-14.

    Benchmarks report ``100 * raw`` (``details["score_x100"]``); the training
    scale is raw as is. ``backend`` is ``"auto"`` (open_clip when it imports,
    else transformers), ``"open_clip"`` or ``"transformers"``; see the module
    docstring. The ``transformers`` backend converts the checkpoint once and
    caches the conversion beside it.
    """

    name = "hpsv2"
    version = "1-hps-v2.0"
    description = "HPS v2 (open_clip ViT-H-14 fine-tuned on HPD v2): cos(image, text), x100 in benchmarks; trained as is"
    weight_sets = ("hpsv2", "clip-vit-h-14-processor")
    checkpoint_set = "hpsv2"
    checkpoint_file = "HPS_v2_compressed.pt"
    open_clip_arch = "ViT-H-14"

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, weights=None, backend: str = "auto"):
        super().__init__(device=device, batch_size=batch_size, weights=weights)
        if backend not in BACKENDS:
            raise ValueError(f"{self.name}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend

    def resolve_backend(self) -> str:
        """The backend ``auto`` stands for here: ``open_clip`` when it imports, else ``transformers``."""
        if self.backend != "auto":
            return self.backend
        return "open_clip" if open_clip_importable()[0] else "transformers"

    def load(self) -> None:
        ckpt = self.weight_path(self.checkpoint_set) / self.checkpoint_file
        backend = self.resolve_backend()
        if backend == "open_clip":
            ok, why = open_clip_importable()
            if not ok:
                raise FlowOPDError(
                    f"{self.name}: backend='open_clip' but open_clip cannot import ({why}); pip install 'flowopd[openclip]' or use backend='transformers'"
                )
            self._load_open_clip(ckpt)
        else:
            self._load_transformers(ckpt)
        self.active_backend = backend

    def _load_open_clip(self, ckpt: Path) -> None:
        """The official path (HPSv2 ``img_score.py``); ``pretrained=None`` since the checkpoint replaces every weight."""
        import open_clip

        model, _, preprocess_val = open_clip.create_model_and_transforms(
            self.open_clip_arch, pretrained=None, precision="fp32", device=self.device, jit=False, force_quick_gelu=False, output_dict=True
        )
        model.load_state_dict(read_hps_state_dict(ckpt))
        self.model = model.float().to(self.device).eval()
        self.preprocess = preprocess_val
        self.tokenizer = open_clip.get_tokenizer(self.open_clip_arch)

    def _load_transformers(self, ckpt: Path) -> None:
        proc_dir = self.weight_path("clip-vit-h-14-processor")
        self.tokenizer = load_clip_tokenizer(proc_dir)
        self.processor = load_clip_image_processor(proc_dir)
        folder, temporary = converted_model_dir(ckpt)
        try:
            self.model = load_clip_model(folder, self.device)
        finally:
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)

    def _cosines(self, images, prompts) -> torch.Tensor:
        if self.active_backend == "open_clip":
            from PIL import Image

            pix = torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
            text = self.tokenizer(list(prompts)).to(self.device)
            out = self.model(pix, text)
            img, txt = out["image_features"], out["text_features"]  # already L2-normalised by open_clip
        else:
            img = image_embeddings(self.model, self.processor, images, self.device)
            txt = text_embeddings(self.model, self.tokenizer, prompts, self.device, padding="max_length")  # open_clip pads to 77 too
        return (img * txt).sum(dim=-1)

    def _score(self, images, prompts, metadata):
        with torch.inference_mode():
            cos = self._cosines(images, prompts).float().cpu().tolist()
        return cos, [{"score_x100": 100.0 * c, "backend": self.active_backend} for c in cos]


class HPSv21(HPSv2):
    """HPS v2.1: the same model and score as :class:`HPSv2`, trained on HPD v2.1 (``HPS_v2.1_compressed.pt``)."""

    name = "hpsv2.1"
    version = "1-hps-v2.1"
    description = "HPS v2.1 (open_clip ViT-H-14 fine-tuned on HPD v2.1): cos(image, text), x100 in benchmarks; trained as is"
    weight_sets = ("hpsv2.1", "clip-vit-h-14-processor")
    checkpoint_set = "hpsv2.1"
    checkpoint_file = "HPS_v2.1_compressed.pt"


__all__ = [
    "BACKENDS",
    "CONTEXT_LENGTH",
    "HPSv2",
    "HPSv21",
    "clip_config",
    "config_from_open_clip_state_dict",
    "convert_open_clip_state_dict",
    "converted_model_dir",
    "read_hps_state_dict",
    "vit_h_14_config",
]
