"""What every backbone built from a diffusers pipeline's components shares (SD3 / SD3.5, FLUX.1, Qwen-Image): the
frozen text encoders and VAE, the transformer as the only trainable part, the VAE's latent encode / decode, and fusing a
LoRA through the pipeline's own ``load_lora_weights``. Each model's module adds its prompt encoding, velocity and schedule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from flowopd.errors import FlowOPDError
from flowopd.lora import LORA_FILE

EMBED_CACHE = 64  # prompts whose embeddings stay on the device (SD3.5: 333 x 4096 values each, 2.7 MB in bf16)


def first_line(exc: BaseException) -> str:
    """An exception's first line (diffusers' and the hub's errors run to pages): what the CLI's one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with no path syntax: a hub repository, not a (missing) local folder."""
    if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1:
        return False
    owner, name = source.split("/")
    return bool(owner) and bool(name)


def fuse_lora(pipe: Any, folder: Path, family: str) -> None:
    """Load a diffusers-format LoRA with the pipeline's ``load_lora_weights``, fuse it into the weights (``W + s B A``) and
    drop the adapter: base-model speed. A LoRA that does not fit is refused in one line naming ``family``."""
    try:
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name="default")
    except Exception as exc:  # peft / diffusers raise several types for a LoRA that does not fit
        raise FlowOPDError(f"LoRA {folder} does not fit this {family} model: {first_line(exc)}") from None
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()


def resolve_source(source: str | Path, aliases: dict[str, str], family: str, pipeline: str, hub_example: str) -> tuple[str, bool]:
    """(what ``from_pretrained`` should load, whether it is a local folder): an alias expanded, a folder checked for
    ``model_index.json``, anything else accepted only if it looks like a hub id; each refusal is one line naming the fix."""
    source = aliases.get(str(source), str(source))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FlowOPDError(f"{path} has no model_index.json; pass a diffusers {family} folder (e.g. `{pipeline}.save_pretrained(DIR)`)")
        return str(path), True
    if path.exists() or not looks_like_hub_id(source):
        raise FlowOPDError(
            f"{family} model {source!r} is not an existing folder; pass a diffusers {family} folder or a hub id such as {hub_example}"
        )
    return source, False


def check_lora_folder(lora: str | Path | None, family: str) -> None:
    """A ``lora`` to fuse must hold a diffusers-format LoRA file (checked before any weight loads)."""
    if lora is not None and not (Path(lora) / LORA_FILE).is_file():
        raise FlowOPDError(f"{lora} is not a LoRA folder (no {LORA_FILE}); pass a folder holding a diffusers-format {family} LoRA")


def load_pipeline(pipeline_cls: Any, source: str, is_folder: bool, device: torch.device, dtype: torch.dtype | None, family: str) -> Any:
    """``pipeline_cls.from_pretrained`` in ``dtype`` (default: bf16 on a GPU, float32 on a CPU) with one-line errors and
    diffusers' loading bar off (the caller shows its own progress)."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # newer diffusers call it `dtype`; `torch_dtype` works in every supported version
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return pipeline_cls.from_pretrained(source, torch_dtype=dtype)
    except Exception as exc:  # hub, network, access and format errors all arrive here: one line for the CLI
        raise FlowOPDError(
            f"could not load {family} {'folder' if is_folder else 'hub id'} {source!r}: {first_line(exc)}; "
            f"pass a complete diffusers {family} folder, or for a hub id check the network and `huggingface-cli login`"
        ) from None
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()


def prepare_pipeline(pipe: Any, device: torch.device, lora: str | Path | None, family: str, modules: tuple[str, ...]) -> Any:
    """A loaded pipeline made ready to sample: no progress bar, on ``device``, ``lora`` fused in, ``modules`` in eval mode
    and frozen (a trainer adds its own LoRA on top)."""
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if lora is not None:
        fuse_lora(pipe, Path(lora), family)
    for name in modules:
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    return pipe


def resolution_shift(config: Any, image_seq_len: int) -> float:
    """The shared sampler's ``shift`` equal to a pipeline's resolution-dependent one (FLUX.1, Qwen-Image): ``exp(mu)``
    (exponential time shift) or ``mu`` (linear), ``mu`` by diffusers' ``calculate_shift`` on the packed image tokens with
    the scheduler ``config``'s bounds; its fixed ``shift`` without dynamic shifting."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    mu = calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    return float(math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu)


def unpack_latents(packed: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """``[B, HW/4, 4C]`` -> ``[B, C, H, W]``: the inverse of the 2x2 packing of FLUX's and Qwen-Image's ``_pack_latents``
    (their ``_unpack_latents``, without Qwen-Image's frame axis)."""
    b = packed.shape[0]
    return packed.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class DiffusersBackbone:
    """The shared half of a diffusers-components backbone; subclasses set ``pipe``, ``transformer``, ``vae``, ``_embeds``."""

    world = "real"
    text_encoder_names: tuple[str, ...] = ("text_encoder", "text_encoder_2")

    pipe: Any
    transformer: Any
    vae: Any
    _embeds: Any

    def _cached_embeds(self, prompts: list[str], encode: Any) -> list[Any]:
        """Each prompt's embeddings, ``encode(new_prompts)`` (one entry per prompt, in order) called once for the prompts
        not yet cached; the last ``EMBED_CACHE`` prompts' entries are kept (a training step encodes each group's prompt
        for rollout and update and the negative prompt every time, and the text encoders are not cheap)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._embeds))
        if todo:
            for p, entry in zip(todo, encode(todo)):
                self._embeds[p] = entry
                self._embeds.move_to_end(p)
            while len(self._embeds) > EMBED_CACHE:
                self._embeds.popitem(last=False)
        return [self._embeds[p] for p in prompts]

    def to(self, device: str | torch.device) -> DiffusersBackbone:
        """Move every component to ``device``."""
        self.pipe.to(device)
        self._embeds.clear()
        return self

    def requires_grad_(self, flag: bool = True) -> DiffusersBackbone:
        """Text encoders and VAE stay frozen whatever ``flag`` says (they are off the training path); the transformer follows it."""
        self.transformer.requires_grad_(flag)
        return self

    def parameters(self):
        return self.transformer.parameters()

    def eval(self) -> DiffusersBackbone:
        """Every component in eval mode (sampling)."""
        for module in (self.transformer, self.vae, *(getattr(self.pipe, n, None) for n in self.text_encoder_names)):
            if module is not None:
                module.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the transformer blocks' activations in backward (diffusers' own switch): memory for time."""
        self.transformer.enable_gradient_checkpointing()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> the transformer's latent space (the VAE's mean, shifted and scaled): what a
        flow-matching (SFT) loss trains on; the inverse of :meth:`decode`."""
        config = self.vae.config
        posterior = self.vae.encode((images * 2.0 - 1.0).to(self.vae.device, self.vae.dtype)).latent_dist
        return ((posterior.mean - (config.shift_factor or 0.0)) * config.scaling_factor).float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images ``[B, 3, H, W]`` float32 in [0, 1], as the pipeline's decode and postprocess."""
        config = self.vae.config
        latents = x.to(self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        image = self.vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)


class PackedBackbone(DiffusersBackbone):
    """A backbone whose transformer takes 2x2-packed latents (FLUX.1, Qwen-Image): the resolution steps by VAE factor x 2,
    and the resolution-dependent shift follows the packed sequence length."""

    vae_scale_factor: int
    latent_channels: int
    scheduler: Any

    def set_resolution(self, px: int) -> None:
        """Sample square ``px`` x ``px`` images: ``latent_shape`` becomes ``(C, px / f, px / f)``; :attr:`shift` follows."""
        from flowopd.errors import ConfigError

        step = self.vae_scale_factor * 2  # 2x2 packing
        if isinstance(px, bool) or not isinstance(px, int) or px <= 0 or px % step:
            raise ConfigError(f"resolution must be a positive multiple of {step} (VAE factor x 2 for packing) for this model, got {px!r}")
        self.resolution = px
        self.latent_shape = (self.latent_channels, px // self.vae_scale_factor, px // self.vae_scale_factor)

    family: str  # the name in messages ("FLUX", "Qwen-Image")
    pipeline_class: str  # diffusers' pipeline class name
    hub_id: str  # the example hub id in messages
    aliases: dict[str, str]

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        lora: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        resolution: int | None = None,
        **options: Any,
    ) -> Any:
        """Load a diffusers folder (``model_index.json``) or hub id of this family; ``lora`` (a diffusers-format LoRA
        folder) is fused in; ``options`` go to the backbone's constructor (see each family's module)."""
        import diffusers

        source, is_folder = resolve_source(source, cls.aliases, cls.family, cls.pipeline_class, cls.hub_id)
        check_lora_folder(lora, cls.family)
        device = torch.device(device)
        pipe = load_pipeline(getattr(diffusers, cls.pipeline_class), source, is_folder, device, dtype, cls.family)
        prepare_pipeline(pipe, device, lora, cls.family, ("transformer", "vae", *cls.text_encoder_names))
        return cls(pipe, resolution=resolution, **options)

    @property
    def image_seq_len(self) -> int:
        """Packed image tokens at the current resolution (what ``mu`` is computed from)."""
        return (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)

    @property
    def shift(self) -> float:
        """The shared sampler's ``shift`` equal to the pipeline's resolution-dependent one (:func:`resolution_shift`)."""
        return resolution_shift(self.scheduler.config, self.image_seq_len)

    @property
    def schedule(self) -> dict[str, Any]:
        """The pipeline's default schedule as ``sampling.sigma_schedule``'s arguments: :attr:`shift` on its points
        ``linspace(1, 1/T)`` (``spacing`` "pipeline"), stretched to its scheduler's ``shift_terminal`` if it has one."""
        return {"shift": self.shift, "spacing": "pipeline", "shift_terminal": self.scheduler.config.get("shift_terminal") or None}
