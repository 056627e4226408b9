"""Resolve a model spec (``mini-base`` or a folder) to a backbone; the table of known weights."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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


def is_sd3(spec: str) -> bool:
    """An SD3 base: ``sd3:<hub id or folder>`` or a diffusers folder with ``model_index.json`` (not a FLUX one)."""
    return spec.startswith(SD3_PREFIX) or ((Path(spec) / "model_index.json").is_file() and not is_flux(spec))


def is_flux(spec: str) -> bool:
    """A FLUX.1 base: ``flux:<hub id or folder>`` or a diffusers folder whose ``model_index.json`` names a ``FluxPipeline``."""
    import json

    if spec.startswith(FLUX_PREFIX):
        return True
    try:
        return json.loads((Path(spec) / "model_index.json").read_text()).get("_class_name") == "FluxPipeline"
    except (OSError, ValueError, AttributeError):
        return False


def diffusers_source(spec: str) -> str:
    """The folder or hub id of a diffusers base spec (``sd3:`` / ``flux:`` prefix removed)."""
    return spec.removeprefix(SD3_PREFIX).removeprefix(FLUX_PREFIX)


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
    """``sd3`` for an SD3 base; else the kind of the model folder ``spec`` names (a LoRA's: its base's). A spec that
    names no model folder is taken as a mini one (loading it says what is wrong)."""
    if is_flux(spec):
        return "flux"
    if is_sd3(spec):
        return "sd3"
    path = model_folder(spec)
    if (path / LORA_FILE).is_file():
        return backbone_kind(read_lora_base(path))
    return folder_kind(path) if (path / "model_info.json").is_file() else "mini"


def load_backbone(spec: str = "mini-base", device: str = "cpu", resolution: int | None = None, dtype=None):
    """``mini-base``, a model folder (``flowopd mini pretrain``), an SD3 base (``sd3:<hub id>`` or a diffusers folder),
    a FLUX.1 base (``flux:<hub id>`` or a FluxPipeline folder), or a LoRA folder (``flowopd train``: its base with the LoRA fused in) -> a backbone in eval mode.

    ``dtype`` sets an SD3 or FLUX model's weights (default: bf16 on a GPU, float32 on a CPU); the mini model is always float32.
    """
    if is_flux(spec):
        from flowopd.flux import FluxBackbone

        return FluxBackbone.from_pretrained(diffusers_source(spec), device=device, resolution=resolution, dtype=dtype)
    if is_sd3(spec):
        from flowopd.sd3 import SD3Backbone

        return SD3Backbone.from_pretrained(spec.removeprefix(SD3_PREFIX), device=device, resolution=resolution, dtype=dtype)
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
    (a FLUX LoRA on SD3, an SD3 one on FLUX, a mini one on either)."""
    from flowopd.lora import read_lora_info

    theirs = read_lora_info(folder).get("base")
    if not theirs or not (theirs.startswith((SD3_PREFIX, FLUX_PREFIX)) or model_folder(theirs).exists()):
        return  # no base recorded, or one no longer here to tell its kind (the digest check still applies)
    kinds = {"sd3": "SD3", "flux": "FLUX"}
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
    if is_sd3(spec) or is_flux(spec):  # names, sizes and times of a diffusers folder (hashing gigabytes per run would take minutes)
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
    train`` (its base is read from ``lora_info.json``), a diffusers SD3 folder
    (``model_index.json``), or ``sd3:<hub id or folder>``; ``lora`` puts a
    diffusers-format LoRA on an SD3 base.
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
        if is_flux(self.spec):
            from flowopd.flux import FluxBackbone

            return FluxBackbone.from_pretrained(self.sd3_source, lora=str(self.lora) if self.lora else None, device=device)
        from flowopd.sd3 import SD3Backbone

        return SD3Backbone.from_pretrained(self.sd3_source, lora=str(self.lora) if self.lora else None, device=device)

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
    if spec.startswith((SD3_PREFIX, FLUX_PREFIX)) or (Path(spec) / "model_index.json").is_file():
        source = diffusers_source(spec)
        if not source:
            raise FlowOPDError(f"--model {spec} needs a hub id or a folder, e.g. sd3:stabilityai/stable-diffusion-3.5-medium or flux:DIR")
        lora_path = Path(lora) if lora else None
        if lora_path is not None and not (lora_path / LORA_FILE).is_file():
            raise FlowOPDError(f"--lora {lora_path} has no {LORA_FILE}; pass a diffusers-format LoRA folder")
        if lora_path is not None:
            check_lora_backbone(lora_path, spec)
        name = Path(source.rstrip("/")).name or source
        label = name + (f"+{lora_path.name if lora_path.name != 'lora' else lora_path.parent.name}" if lora_path else "")
        return ModelRef(spec, "real", label, sd3_source=source, lora=lora_path)
    if lora is not None:
        raise FlowOPDError("--lora applies to an SD3 base (--model sd3:...); for a mini LoRA pass its folder as --model")
    if spec in KNOWN_WEIGHTS:
        ws = KNOWN_WEIGHTS[spec]
        if not ws.present:
            raise FlowOPDError(f"weights {spec!r} are not in this install ({ws.path}); get them with: {ws.how_to_get}")
        return ModelRef(spec, "mini", spec)
    path = Path(spec)
    if (path / LORA_FILE).is_file():
        base = read_lora_base(path)
        if base.startswith((SD3_PREFIX, FLUX_PREFIX)) or (Path(base) / "model_index.json").is_file():
            return resolve_model(base, lora=path)
        resolve_model(base)  # the base must resolve too
        return ModelRef(spec, "mini", lora_label(path))
    if (path / "model_info.json").is_file():
        return ModelRef(spec, "mini", path.name)
    if path.exists():
        raise FlowOPDError(
            f"{path} is not a model folder (no model_info.json, model_index.json or {LORA_FILE}); "
            "pass a mini model, a LoRA folder from `flowopd train`, or a diffusers SD3 folder"
        )
    known = ", ".join(KNOWN_WEIGHTS)
    raise FlowOPDError(
        f"model {spec!r} is neither a known model ({known}), an existing folder, nor sd3:<hub id>; "
        "pass --model mini-base, a folder, or sd3:stabilityai/stable-diffusion-3.5-medium"
    )
