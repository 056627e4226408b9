"""Resolve a model spec (``mini-base`` or a folder) to a backbone; the table of known weights."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path
from typing import Any

from flowopd.errors import FlowOPDError
from flowopd.lora import LORA_FILE
from flowopd.registry import Registry

MINI_BASE_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "mini-base"
MINI_TEACHERS_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "teachers"
MINI_MIX_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "mix"
MINI_STUDENT_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "student"
SD3_PREFIX = "sd3:"  # --model sd3:<hub id or folder>
FLUX_PREFIX = "flux:"  # --model flux:<hub id or folder>
QWEN_IMAGE_PREFIX = "qwen-image:"  # --model qwen-image:<hub id or folder>
MINI_SAMPLING = {"steps": 20, "cfg": 3.0, "shift": 1.0}  # chosen by tests/bench/mini_base_scores.py (docs/mini-world.md)


@dataclasses.dataclass
class KnownModel:
    """A named set of weights the project knows: where it lives and whether it is present."""

    name: str
    kind: str
    path: Path
    description: str
    how_to_get: str

    @property
    def present(self) -> bool:
        return (self.path / (LORA_FILE if self.kind == "mini-lora" else "transformer")).exists()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path.exists() else 0

    def digest(self) -> str | None:
        """sha256 over the folder's safetensors files (names and bytes), or None when absent."""
        return model_digest(self.name) if self.present else None


KNOWN_WEIGHTS = {
    "mini-base": KnownModel(
        "mini-base",
        "mini",
        MINI_BASE_DIR,
        "the mini world's pre-trained base (ships with the package)",
        "flowopd mini pretrain --config configs/mini/pretrain.yaml --out runs/mini-base-v2-stage1, then "
        "flowopd mini pretrain --config configs/mini/pretrain-stage2.yaml --out runs/mini-base-v2  (then pass --model runs/mini-base-v2)",
    ),
    **{
        f"mini-teacher-{task}": KnownModel(
            f"mini-teacher-{task}",
            "mini-lora",
            MINI_TEACHERS_DIR / task,
            f"the mini GRPO teacher for {task} (a LoRA on mini-base; ships with the package)",
            f"flowopd train teacher --config mini/teacher-{task} --out runs/teacher-{task}  (then pass --model runs/teacher-{task}/lora)",
        )
        for task in ("compose", "text", "preference", "quality")
    },
    **{
        f"mini-mix-{variant}": KnownModel(
            f"mini-mix-{variant}",
            "mini-lora",
            MINI_MIX_DIR / variant,
            f"the mini GRPO-Mix baseline ({variant}; a LoRA on mini-base; ships with the package)",
            f"flowopd train mix --variant {variant} --out runs/mix-{variant}  (then pass --model runs/mix-{variant}/lora)",
        )
        for variant in ("weighted", "alternate")
    },
    "mini-student": KnownModel(
        "mini-student",
        "mini-lora",
        MINI_STUDENT_DIR,
        "the mini Flow-OPD student (the four mini teachers distilled with MAR by `flowopd train opd`; ships with the package)",
        "flowopd train opd --out runs/opd  (then pass --model runs/opd/lora)",
    ),
}


@dataclasses.dataclass(frozen=True)
class DiffusersFamily:
    """A model family loaded from a diffusers pipeline's components: how a spec names it and which backbone loads it."""

    kind: str  # the backbone kind (``backbone_kind``, the plan's "backbone")
    name: str  # in messages: "SD3", "FLUX", "Qwen-Image"
    prefix: str  # ``--model PREFIX<hub id or folder>``
    pipeline: str  # the ``_class_name`` of a folder's ``model_index.json``
    backbone: str  # ``module:class`` with ``from_pretrained(source, lora=, device=, dtype=, resolution=)``
    train_cfg: float | None  # a recipe's ``sampler.cfg`` when it sets none (None: the field's default, SD3.5's 4.5)
    example: str  # a spec, for error messages
    spacing: str = "sd3"  # a recipe's ``sampler.spacing`` when it sets none (``sampling.sigma_schedule``)
    shift_terminal: float | None = None  # a recipe's ``sampler.shift_terminal`` when it sets none (its scheduler's)
    # the scheduler's resolution-dependent shift, calculate_shift's (base_image_seq_len, max_image_seq_len, base_shift,
    # max_shift); None: a fixed shift
    mu_bounds: tuple[int, int, float, float] | None = None

    def resolution_shift(self, px: int) -> float | None:
        """``exp(mu)`` at ``px`` x ``px`` (diffusers' ``calculate_shift`` on the packed tokens: VAE factor 8, 2x2 packing) from
        the family's scheduler config, as :func:`flowopd.diffusers_backbone.resolution_shift` gives the loaded model; None
        for a fixed shift."""
        if self.mu_bounds is None:
            return None
        base_len, max_len, base_shift, max_shift = self.mu_bounds
        m = (max_shift - base_shift) / (max_len - base_len)
        b = base_shift - m * base_len
        return math.exp((px // 16) ** 2 * m + b)


DIFFUSERS_FAMILIES = (
    DiffusersFamily("sd3", "SD3", SD3_PREFIX, "StableDiffusion3Pipeline", "flowopd.sd3:SD3Backbone", None,
                    "sd3:stabilityai/stable-diffusion-3.5-medium"),
    # FLUX.1-dev is guidance-distilled: its guidance is embedded, true CFG is opt-in (cfg 1); FluxPipeline's spacing and mu
    DiffusersFamily("flux", "FLUX", FLUX_PREFIX, "FluxPipeline", "flowopd.flux:FluxBackbone", 1.0, "flux:black-forest-labs/FLUX.1-dev",
                    "pipeline", None, (256, 4096, 0.5, 1.15)),
    # Qwen-Image samples with true CFG 4 (QwenImagePipeline's true_cfg_scale); its scheduler stretches to 0.02
    DiffusersFamily("qwen-image", "Qwen-Image", QWEN_IMAGE_PREFIX, "QwenImagePipeline", "flowopd.qwen_image:QwenImageBackbone", 4.0,
                    "qwen-image:Qwen/Qwen-Image", "pipeline", 0.02, (256, 8192, 0.5, 0.9)),
)  # fmt: skip
DIFFUSERS_PREFIXES = tuple(f.prefix for f in DIFFUSERS_FAMILIES)


def diffusers_family(spec: str) -> DiffusersFamily | None:
    """The family of a diffusers base spec: by its prefix, else by the pipeline a folder's ``model_index.json`` names (a
    folder naming no known pipeline is taken as SD3's, as before FLUX); None for anything else (a mini model, a LoRA)."""
    import json

    for family in DIFFUSERS_FAMILIES:
        if spec.startswith(family.prefix):
            return family
    index = Path(spec) / "model_index.json"
    if not index.is_file():
        return None
    try:
        pipeline = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        pipeline = None
    return next((f for f in DIFFUSERS_FAMILIES if f.pipeline == pipeline), DIFFUSERS_FAMILIES[0])


def is_diffusers(spec: str) -> bool:
    """A base loaded from a diffusers pipeline's components (SD3, FLUX.1, Qwen-Image)."""
    return diffusers_family(spec) is not None


def is_sd3(spec: str) -> bool:
    """An SD3 base: ``sd3:<hub id or folder>`` or a diffusers folder with ``model_index.json`` of no other family."""
    family = diffusers_family(spec)
    return family is not None and family.kind == "sd3"


def is_flux(spec: str) -> bool:
    """A FLUX.1 base: ``flux:<hub id or folder>`` or a diffusers folder whose ``model_index.json`` names a ``FluxPipeline``."""
    family = diffusers_family(spec)
    return family is not None and family.kind == "flux"


def is_qwen_image(spec: str) -> bool:
    """A Qwen-Image base: ``qwen-image:<hub id or folder>`` or a folder whose ``model_index.json`` names ``QwenImagePipeline``."""
    family = diffusers_family(spec)
    return family is not None and family.kind == "qwen-image"


def diffusers_source(spec: str) -> str:
    """The folder or hub id of a diffusers base spec (its family's prefix removed)."""
    family = diffusers_family(spec)
    return spec.removeprefix(family.prefix) if family is not None else spec


def load_diffusers(spec: str, lora: str | Path | None = None, **options: Any):
    """The backbone of a diffusers base spec (its family's class), ``lora`` fused in; ``options`` go to ``from_pretrained``."""
    import importlib

    family = diffusers_family(spec)
    if family is None:
        raise FlowOPDError(f"{spec!r} is not a diffusers base; pass e.g. {', '.join(f.example for f in DIFFUSERS_FAMILIES)}")
    module, name = family.backbone.split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.from_pretrained(diffusers_source(spec), lora=str(lora) if lora else None, **options)


def prompt_world(spec: str):
    """The prompt world that draws prompts for tasks without a prompt file on base ``spec``: the world registered under
    the base's backbone kind (the mini world for a mini model), None when there is none (an SD3 base: its tasks need
    prompt files)."""
    from flowopd.tasks import WORLDS

    kind = backbone_kind(spec)
    return WORLDS[kind] if kind in WORLDS else None


# backbone kind (``model_info.json``'s "kind") -> its class, with ``from_pretrained(folder)``; plugins add kinds through
# the ``flowopd.backbones`` entry-point group. An SD3 base loads through flowopd.sd3 (``sd3:`` specs, diffusers folders).
BACKBONES: Registry[Any] = Registry(
    "backbone",
    {"mini": "flowopd.mini.model:MiniBackbone"},
    error=FlowOPDError,
    entry_point_group="flowopd.backbones",
    unknown_hint="install the plugin that provides it (`flowopd weights list` names the built-in models)",
)


def folder_kind(path: Path) -> str:
    """A model folder's backbone kind, from its ``model_info.json`` (``mini`` when it names none)."""
    import json

    try:
        info = json.loads((path / "model_info.json").read_text())
    except (OSError, ValueError) as exc:
        raise FlowOPDError(f"{path}/model_info.json cannot be read ({exc}); pass a folder written by `flowopd mini pretrain`") from None
    return str(info.get("kind", "mini")) if isinstance(info, dict) else "mini"


def model_folder(spec: str) -> Path:
    """The folder a mini spec names: a known model's, else the spec as a path (it may not exist)."""
    return KNOWN_WEIGHTS[spec].path if spec in KNOWN_WEIGHTS else Path(spec)


def backbone_kind(spec: str) -> str:
    """A diffusers base's family kind (``sd3``, ``flux``, ``qwen-image``); else the kind of the model folder ``spec``
    names (a LoRA's: its base's). A spec that names no model folder is taken as a mini one (loading it says what is wrong)."""
    family = diffusers_family(spec)
    if family is not None:
        return family.kind
    path = model_folder(spec)
    if (path / LORA_FILE).is_file():
        return backbone_kind(read_lora_base(path))
    return folder_kind(path) if (path / "model_info.json").is_file() else "mini"


def load_backbone(spec: str = "mini-base", device: str = "cpu", resolution: int | None = None, dtype=None):
    """``mini-base``, a model folder (``flowopd mini pretrain``), a diffusers base (``sd3:`` / ``flux:`` /
    ``qwen-image:<hub id>``, or a diffusers folder: its ``model_index.json`` names the pipeline), or a LoRA folder
    (``flowopd train``: its base with the LoRA fused in) -> a backbone in eval mode.

    ``dtype`` sets a diffusers model's weights (default: bf16 on a GPU, float32 on a CPU); the mini model is always float32.
    """
    if is_diffusers(spec):
        return load_diffusers(spec, device=device, resolution=resolution, dtype=dtype)
    if spec not in KNOWN_WEIGHTS and (Path(spec) / LORA_FILE).is_file():
        return _load_with_lora(Path(spec), device)
    if spec in KNOWN_WEIGHTS:
        ws = KNOWN_WEIGHTS[spec]
        if not ws.present:
            raise FlowOPDError(f"weights {spec!r} are not in this install ({ws.path}); get them with: {ws.how_to_get}")
        if ws.kind == "mini-lora":
            return _load_with_lora(ws.path, device)
        path = ws.path
    else:
        path = Path(spec)
        if not path.exists():
            known = ", ".join(KNOWN_WEIGHTS)
            raise FlowOPDError(
                f"model {spec!r} is neither a known model ({known}) nor an existing folder; pass --model mini-base or a model folder"
            )
        info = path / "model_info.json"
        if not info.is_file():
            raise FlowOPDError(f"{path} has no model_info.json; pass a folder written by `flowopd mini pretrain`")
    model = BACKBONES.get_or_explain(folder_kind(path)).from_pretrained(path)
    return model.to(device).eval()


def check_base(folder: str | Path, base: str, digest: str | None = None) -> dict:
    """Refuse a LoRA trained on another base; a shipped one (a teacher, a mix, the student) is named with the command that
    rebuilds it on this base, never used as it is."""
    from flowopd.lora import check_lora_base

    check_lora_backbone(folder, base)
    try:
        return check_lora_base(folder, digest or model_digest(base), base)
    except FlowOPDError:
        shipped = next((ws for ws in KNOWN_WEIGHTS.values() if ws.path.resolve() == Path(folder).resolve()), None)
        if shipped is None:
            raise
        raise FlowOPDError(
            f"the shipped {shipped.name} was trained on another {base} than the one installed (the base changed since); "
            f"rebuild it with: {shipped.how_to_get}"
        ) from None


def check_lora_backbone(folder: str | Path, base: str) -> None:
    """Refuse, in one line naming both backbones, a LoRA whose ``lora_info.json`` records a base of another backbone kind
    (a FLUX LoRA on SD3, a Qwen-Image one on FLUX, a mini one on any)."""
    from flowopd.lora import read_lora_info

    theirs = read_lora_info(folder).get("base")
    if not theirs or not (theirs.startswith(DIFFUSERS_PREFIXES) or model_folder(theirs).exists()):
        return  # no base recorded, or one no longer here to tell its kind (the digest check still applies)
    kinds = {f.kind: f.name for f in DIFFUSERS_FAMILIES}
    their_kind, our_kind = (kinds.get(k, k) for k in (backbone_kind(theirs), backbone_kind(base)))
    if their_kind != our_kind:
        raise FlowOPDError(
            f"LoRA {folder} was trained on a {their_kind} model ({theirs}), not on this {our_kind} model ({base}); "
            f"pass a LoRA trained on {base}"
        )


def _load_with_lora(folder: Path, device: str):
    """The base named in the LoRA's ``lora_info.json`` with the LoRA applied as the active adapter."""
    from flowopd.lora import load_lora

    base = read_lora_base(folder)
    backbone = load_backbone(base, device)
    check_base(folder, base)
    load_lora(backbone.transformer, folder, "default")
    # fused into the weights (W + s B A) and unloaded: a loaded LoRA model samples as fast as its base (~25% faster at
    # the mini scale with a rank-128 merge); differences are float rounding (~1e-6)
    backbone.transformer.fuse_lora(lora_scale=1.0)
    backbone.transformer.unload_lora()
    return backbone.eval()


def model_digest(spec: str) -> str:
    """sha256 over a model's safetensors (names and bytes): which base a LoRA or a checkpoint belongs to.

    Cached per process on the files' names, sizes and modification times, so a
    run that checks its base several times (resume, LoRA loads) reads it once.
    """
    if is_diffusers(spec):  # names, sizes and times of a diffusers folder (hashing gigabytes per run would take minutes)
        source = Path(diffusers_source(spec))
        if not source.is_dir():  # a hub id as is
            return hashlib.sha256(diffusers_source(spec).encode()).hexdigest()
        stats = [f"{f.relative_to(source)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(source.rglob("*")) if f.is_file()]
        return hashlib.sha256("|".join(stats).encode()).hexdigest()
    path = Path(KNOWN_WEIGHTS[spec].path if spec in KNOWN_WEIGHTS else spec).resolve()
    files = sorted(path.rglob("*.safetensors"))
    return _digest(path, tuple((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=32)
def _digest(path: Path, files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(name.encode())
        h.update((path / name).read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ model specs for evaluation


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """What ``--model SPEC`` names, resolved without loading weights.

    SPEC is a mini model (``mini-base``, a shipped teacher or student, a
    ``flowopd mini pretrain`` folder), a LoRA folder written by ``flowopd
    train`` (its base is read from ``lora_info.json``), a diffusers folder
    (``model_index.json``: SD3, FLUX.1 or Qwen-Image), or ``sd3:`` / ``flux:`` /
    ``qwen-image:<hub id or folder>``; ``lora`` puts a diffusers-format LoRA on
    such a base.
    """

    spec: str
    world: str  # "mini" (the mini world's vocabulary and rewards) or "real" (real prompts and reward models)
    label: str
    sd3_source: str | None = None
    lora: Path | None = None

    def load(self, device: str = "cpu"):
        """The backbone, in eval mode."""
        if self.sd3_source is None:
            return load_backbone(self.spec, device)
        return load_diffusers(self.spec, lora=self.lora, device=device)

    def digest(self) -> str:
        """Identifies the weights: images made by another model never count as this one's."""
        parts = []
        if self.sd3_source is None:
            lora = self.lora_folder()
            if lora is not None:
                parts += [model_digest(read_lora_base(lora)), model_digest(str(lora))]
            else:
                parts.append(model_digest(self.spec))
        else:
            parts.append(model_digest(SD3_PREFIX + self.sd3_source))
            if self.lora is not None:
                parts.append(model_digest(str(self.lora)))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def lora_folder(self) -> Path | None:
        """The mini LoRA folder this spec names (a shipped teacher or student, or a `flowopd train` output), if any."""
        if self.sd3_source is not None:
            return self.lora
        if self.spec in KNOWN_WEIGHTS:
            ws = KNOWN_WEIGHTS[self.spec]
            return ws.path if ws.kind == "mini-lora" else None
        return Path(self.spec) if (Path(self.spec) / LORA_FILE).is_file() else None

    def train_log(self) -> Path | None:
        """The trainer's ``log.jsonl`` behind this model (beside or above its LoRA folder, or above an evaluation's LoRA
        under ``RUN/evals/loras``), for training curves."""
        lora = self.lora_folder()
        if lora is None:
            return None
        # RUN/lora, or RUN/evals/loras/step-N (an evaluation during training, flowopd.watch)
        for candidate in (lora / "log.jsonl", lora.parent / "log.jsonl", lora.parent.parent.parent / "log.jsonl"):
            if candidate.is_file():
                return candidate.resolve()
        return None


def read_lora_base(folder: Path) -> str:
    from flowopd.lora import read_lora_info

    base = read_lora_info(folder).get("base")
    if not base:
        raise FlowOPDError(f"{folder}/lora_info.json does not name its base model; pass a LoRA written by `flowopd train`")
    return base


def lora_label(path: Path) -> str:
    """A LoRA folder's name in reports: its run's (``RUN/lora``), ``RUN@step-N`` for an evaluation during training
    (``RUN/evals/loras/step-N``), else the folder's own."""
    path = Path(path).resolve()
    if path.name == "lora":
        return path.parent.name
    if path.parent.name == "loras" and path.parent.parent.name == "evals":
        return f"{path.parents[2].name}@{path.name}"
    return path.name


def resolve_model(spec: str, lora: str | Path | None = None) -> ModelRef:
    """``--model SPEC [--lora DIR]`` -> a :class:`ModelRef`, with a one-line error naming the fix for a bad spec."""
    if is_diffusers(spec):
        source = diffusers_source(spec)
        if not source:
            raise FlowOPDError(f"--model {spec} needs a hub id or a folder, e.g. {', '.join(f.example for f in DIFFUSERS_FAMILIES)}")
        lora_path = Path(lora) if lora else None
        if lora_path is not None and not (lora_path / LORA_FILE).is_file():
            raise FlowOPDError(f"--lora {lora_path} has no {LORA_FILE}; pass a diffusers-format LoRA folder")
        if lora_path is not None:
            check_lora_backbone(lora_path, spec)
        name = Path(source.rstrip("/")).name or source
        label = name + (f"+{lora_path.name if lora_path.name != 'lora' else lora_path.parent.name}" if lora_path else "")
        return ModelRef(spec, "real", label, sd3_source=source, lora=lora_path)
    if lora is not None:
        raise FlowOPDError(
            "--lora applies to an SD3 base (--model sd3:...) or another diffusers base (flux:, qwen-image:); "
            "for a mini LoRA pass its folder as --model"
        )
    if spec in KNOWN_WEIGHTS:
        ws = KNOWN_WEIGHTS[spec]
        if not ws.present:
            raise FlowOPDError(f"weights {spec!r} are not in this install ({ws.path}); get them with: {ws.how_to_get}")
        return ModelRef(spec, "mini", spec)
    path = Path(spec)
    if (path / LORA_FILE).is_file():
        base = read_lora_base(path)
        if is_diffusers(base):
            return resolve_model(base, lora=path)
        resolve_model(base)  # the base must resolve too
        return ModelRef(spec, "mini", lora_label(path))
    if (path / "model_info.json").is_file():
        return ModelRef(spec, "mini", path.name)
    if path.exists():
        raise FlowOPDError(
            f"{path} is not a model folder (no model_info.json, model_index.json or {LORA_FILE}); "
            "pass a mini model, a LoRA folder from `flowopd train`, or a diffusers SD3 / FLUX / Qwen-Image folder"
        )
    known = ", ".join(KNOWN_WEIGHTS)
    raise FlowOPDError(
        f"model {spec!r} is neither a known model ({known}), an existing folder, nor sd3: / flux: / qwen-image:<hub id>; "
        f"pass --model mini-base, a folder, or one of {', '.join(f.example for f in DIFFUSERS_FAMILIES)}"
    )
