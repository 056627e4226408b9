"""Resolve a model spec (``mini-base`` or a folder) to a backbone; the table of known weights."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from flowopd.errors import FlowOPDError

MINI_BASE_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "mini-base"
MINI_TEACHERS_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "teachers"
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
        return (self.path / ("pytorch_lora_weights.safetensors" if self.kind == "mini-lora" else "transformer")).exists()

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
}


def load_backbone(spec: str = "mini-base", device: str = "cpu"):
    """``mini-base``, a model folder (``flowopd mini pretrain``) or a LoRA folder (``flowopd train``: its base + the LoRA)
    -> a MiniBackbone in eval mode."""
    from flowopd.mini.model import MiniBackbone

    if spec not in KNOWN_WEIGHTS and (Path(spec) / "pytorch_lora_weights.safetensors").is_file():
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
    return backbone.eval()


def model_digest(spec: str) -> str:
    """sha256 over a model's safetensors (names and bytes): which base a LoRA or a checkpoint belongs to."""
    path = KNOWN_WEIGHTS[spec].path if spec in KNOWN_WEIGHTS else Path(spec)
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()
