"""Resolve a model spec (``mini-base`` or a folder) to a backbone; the table of known weights."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

from flowopd.errors import FlowOPDError
from flowopd.lora import LORA_FILE

MINI_BASE_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "mini-base"
MINI_TEACHERS_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "teachers"
MINI_MIX_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "mix"
MINI_SAMPLING = {"steps": 20, "cfg": 3.0, "shift": 1.0}  # chosen by tests/bench/mini_base_scores.py (docs/mini-world.md)


@dataclasses.dataclass
class WeightSet:
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
    "mini-base": WeightSet(
        "mini-base",
        "mini",
        MINI_BASE_DIR,
        "the mini world's pre-trained base (ships with the package)",
        "flowopd mini pretrain --out DIR  (then pass --model DIR)",
    ),
    **{
        f"mini-teacher-{task}": WeightSet(
            f"mini-teacher-{task}",
            "mini-lora",
            MINI_TEACHERS_DIR / task,
            f"the mini GRPO teacher for {task} (a LoRA on mini-base; ships with the package)",
            f"flowopd train teacher --config mini/teacher-{task} --out runs/teacher-{task}  (then pass --model runs/teacher-{task}/lora)",
        )
        for task in ("compose", "text", "preference", "quality")
    },
    **{
        f"mini-mix-{variant}": WeightSet(
            f"mini-mix-{variant}",
            "mini-lora",
            MINI_MIX_DIR / variant,
            f"the mini GRPO-Mix baseline ({variant}; a LoRA on mini-base; ships with the package)",
            f"flowopd train mix --variant {variant} --out runs/mix-{variant}  (then pass --model runs/mix-{variant}/lora)",
        )
        for variant in ("weighted", "alternate")
    },
}


def load_backbone(spec: str = "mini-base", device: str = "cpu"):
    """``mini-base``, a model folder (``flowopd mini pretrain``) or a LoRA folder (``flowopd train``: its base with the
    LoRA fused in) -> a MiniBackbone in eval mode."""
    from flowopd.mini.model import MiniBackbone

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
    model = MiniBackbone.from_pretrained(path)
    return model.to(device).eval()


def _load_with_lora(folder: Path, device: str):
    """The base named in the LoRA's ``lora_info.json`` with the LoRA applied as the active adapter."""
    from flowopd.lora import check_lora_base, load_lora, read_lora_info

    info = read_lora_info(folder)
    base = info.get("base")
    if not base:
        raise FlowOPDError(f"{folder}/lora_info.json does not name its base model; pass a LoRA written by `flowopd train`")
    backbone = load_backbone(base, device)
    check_lora_base(folder, model_digest(base), base)
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
