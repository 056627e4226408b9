"""LoRA adapters on the backbone's transformer through peft, saved in the diffusers LoRA format.

A saved LoRA is a folder with ``pytorch_lora_weights.safetensors`` (keys
``transformer.<module>.lora_A/B.weight`` and the peft config in the file's
metadata, exactly what ``StableDiffusion3Pipeline.save_lora_weights`` writes, so
``pipe.load_lora_weights(folder)`` loads it) and ``lora_info.json`` naming the
base model it was trained on, so a LoRA is never applied to the wrong base.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowopd.errors import FlowOPDError, naming_corrupt_weights

if TYPE_CHECKING:
    import torch

LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json")  # a peft `save_pretrained` folder (e.g. Flow-GRPO's releases)
INFO_FILE = "lora_info.json"
# SPEC section 4: the attention projections of both streams of the joint-attention blocks, written with the `attn.` of
# the joint block as Flow-GRPO does: SD3.5's dual-attention blocks also hold `attn2.to_q...`
# (image self-attention), which the teachers of the paper do not adapt (peft matches a target as a suffix of the module name)
SD3_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


def add_lora(
    transformer: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = SD3_LORA_TARGETS, name: str = "default"
) -> None:
    """Add a trainable adapter ``name`` (peft, Gaussian A and zero B, so it starts as the identity)."""
    from peft import LoraConfig

    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights="gaussian", lora_dropout=0.0)
    transformer.add_adapter(cfg, adapter_name=name)


def copy_adapter(transformer: torch.nn.Module, source: str, name: str) -> None:
    """Add adapter ``name`` as a frozen copy of adapter ``source`` (same config and weights); the active adapter and every
    ``requires_grad`` flag stay as they were (DiffusionNFT's old policy)."""
    import copy

    previous = active_adapters(transformer)
    with _flags_kept(transformer), warnings.catch_warnings():  # adding activates the new adapter, and peft marks it alone trainable
        warnings.simplefilter("ignore", UserWarning)  # peft warns that a model with adapters gets another: the point here
        transformer.add_adapter(copy.deepcopy(transformer.peft_config[source]), adapter_name=name)
    set_lora_state_dict(transformer, lora_state_dict(transformer, source), name)
    _freeze_and_reactivate(transformer, name, previous)


def lora_state_dict(transformer: torch.nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights, keyed as peft saves them (no adapter name inside the keys)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(transformer, adapter_name=name).items()}


def set_lora_state_dict(transformer: torch.nn.Module, state: dict[str, torch.Tensor], name: str = "default") -> None:
    """Load weights from :func:`lora_state_dict` back into adapter ``name``; every key must match."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise FlowOPDError(f"LoRA weights do not fit this model ({len(unexpected)} unexpected keys, e.g. {unexpected[0]})")


def save_lora(transformer: torch.nn.Module, folder: str | Path, info: dict[str, Any], name: str = "default", state=None) -> None:
    """Write ``folder`` in the diffusers LoRA format plus ``lora_info.json`` (``state`` overrides the live weights, e.g. EMA)."""
    from diffusers.loaders import SD3LoraLoaderMixin

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in (state if state is not None else lora_state_dict(transformer, name)).items()}
    meta = transformer.peft_config[name].to_dict()
    for key, value in meta.items():  # sets (target_modules) iterate in a per-process order: sort them so equal LoRAs are equal files
        if isinstance(value, (set, frozenset)):
            meta[key] = sorted(value)
    SD3LoraLoaderMixin.save_lora_weights(folder, transformer_lora_layers=weights, transformer_lora_adapter_metadata=meta)
    canonical_header(folder / LORA_FILE)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, so equal tensors and metadata give equal bytes.

    safetensors writes the ``__metadata__`` entries in a per-process hash order
    (``format`` and ``lora_adapter_metadata`` swap in about half the processes), so
    a resumed run's LoRA matched a straight run's tensors but not its sha256. The
    layout is 8 bytes of little-endian header length, the JSON header padded with
    spaces to a multiple of 8, then the data, whose offsets are relative to its
    start, so only the header changes.
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def is_lora_folder(folder: str | Path) -> bool:
    """A diffusers-format LoRA (``pytorch_lora_weights.safetensors``) or a peft one (``adapter_model.safetensors`` + config)."""
    folder = Path(folder)
    return (folder / LORA_FILE).is_file() or all((folder / f).is_file() for f in PEFT_FILES)


def load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is one line naming it."""
    from safetensors.torch import load_file

    with naming_corrupt_weights(file):
        return load_file(file)


def read_peft_lora(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A peft ``save_pretrained`` folder of an SD3 transformer's LoRA -> (diffusers-keyed state dict, LoraConfig fields)."""
    config = json.loads((folder / PEFT_FILES[1]).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise FlowOPDError(f"{folder} holds a {config.get('peft_type')} adapter, not a LoRA; pass a LoRA folder")
    state = {}
    for key, value in load_safetensors(folder / PEFT_FILES[0]).items():
        key = key.removeprefix("base_model.model.").replace(".default.", ".")  # peft's wrapper prefix (and adapter name, if saved)
        state[f"transformer.{key.removeprefix('transformer.')}"] = value
    fields = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern")
    return state, {k: config[k] for k in fields if k in config}


def read_lora_info(folder: str | Path) -> dict[str, Any]:
    """``lora_info.json`` of a saved LoRA (empty for a LoRA from elsewhere), with a clear error when the folder is not one."""
    folder = Path(folder)
    if not is_lora_folder(folder):
        raise FlowOPDError(
            f"{folder} is not a LoRA folder (no {LORA_FILE}, nor peft's {' + '.join(PEFT_FILES)}); pass a folder written by `flowopd train`"
        )
    info = folder / INFO_FILE
    return json.loads(info.read_text()) if info.is_file() else {}


def check_lora_base(folder: str | Path, base_digest: str | None, base_name: str) -> dict[str, Any]:
    """Refuse a LoRA trained on another base model (its recorded base digest differs from ours)."""
    info = read_lora_info(folder)
    theirs = info.get("base_digest")
    if theirs and base_digest and theirs != base_digest:
        raise FlowOPDError(
            f"LoRA {folder} was trained on another base model ({info.get('base', '?')}, digest {theirs[:12]}), "
            f"not on {base_name} (digest {base_digest[:12]}); pass a LoRA trained on {base_name}"
        )
    return info


def load_lora(transformer: torch.nn.Module, folder: str | Path, name: str, trainable: bool = False) -> None:
    """Load a saved LoRA (ours, any diffusers-format SD3 LoRA, or a peft folder) as adapter ``name``: frozen, or ``trainable``."""
    folder = Path(folder)
    before = active_adapters(transformer)
    ours = (folder / LORA_FILE).is_file()  # else peft's own layout
    try:
        with naming_corrupt_weights(folder / (LORA_FILE if ours else PEFT_FILES[0])), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # peft warns that a model with adapters gets another: the point here
            if ours:
                transformer.load_lora_adapter(folder, weight_name=LORA_FILE, prefix="transformer", adapter_name=name)
            else:  # peft's own layout: its config, then its weights (keys as `lora_state_dict` gives them)
                from peft import LoraConfig

                state, config = read_peft_lora(folder)
                transformer.add_adapter(LoraConfig(**config), adapter_name=name)
                set_lora_state_dict(transformer, {k.removeprefix("transformer."): v for k, v in state.items()}, name)
    except FlowOPDError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise FlowOPDError(f"LoRA {folder} does not fit this model: {str(exc).splitlines()[0]}") from None
    _freeze_and_reactivate(transformer, name, before, trainable)


def _freeze_and_reactivate(transformer: torch.nn.Module, name: str, previous: list[str], trainable: bool = False) -> None:
    """Adapter ``name`` frozen (or ``trainable``), and the adapter active before it was added active again: adding one
    activates it alone, and peft's switch marks what it activates trainable (e.g. the student's adapter must stay the one)."""
    for n, p in transformer.named_parameters():
        if f".{name}." in n:
            p.requires_grad_(trainable)
    if previous:
        with _flags_kept(transformer):
            transformer.set_adapters(previous[0])


def active_adapters(transformer: torch.nn.Module) -> list[str]:
    """The names of the adapters the transformer's forward uses now ([] when it has none)."""
    return list(transformer.active_adapters()) if getattr(transformer, "_hf_peft_config_loaded", False) else []


@contextlib.contextmanager
def _flags_kept(transformer: torch.nn.Module) -> Iterator[None]:
    """Restore every LoRA parameter's ``requires_grad`` on exit: peft marks whatever it activates trainable and whatever
    it disables frozen, so the student's adapter must be put back as the only trainable one."""
    flags = [(p, p.requires_grad) for n, p in transformer.named_parameters() if "lora_" in n]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def use_adapter(transformer: torch.nn.Module, name: str | None) -> Iterator[None]:
    """Forwards inside run adapter ``name`` (None: the base, every adapter off); then the previous adapter is back.

    Teachers, the MAR anchor and the reference are adapters on the student's own
    frozen transformer (SPEC section 6), so a switch is a flag on each LoRA
    layer, not a second model; trainable flags are never changed.
    """
    previous = active_adapters(transformer)
    with _flags_kept(transformer):
        if name is None:
            transformer.disable_adapters()
        else:
            transformer.set_adapters(name)
        try:
            yield
        finally:
            if name is None:
                transformer.enable_adapters()
            if previous:
                transformer.set_adapters(previous[0])
