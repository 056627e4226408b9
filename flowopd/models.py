"""Resolve a model spec (``mini-base`` or a folder) to a backbone; the table of known weights."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from flowopd.errors import FlowOPDError

MINI_BASE_DIR = Path(__file__).resolve().parent / "mini" / "assets" / "mini-base"
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
        return (self.path / "transformer").is_dir()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path.exists() else 0

    def digest(self) -> str | None:
        """sha256 over the folder's safetensors files (names and bytes), or None when absent."""
        if not self.present:
            return None
        h = hashlib.sha256()
        for f in sorted(self.path.rglob("*.safetensors")):
            h.update(str(f.relative_to(self.path)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()


KNOWN_WEIGHTS = {
    "mini-base": WeightSet(
        "mini-base",
        "mini",
        MINI_BASE_DIR,
        "the mini world's pre-trained base (ships with the package)",
        "flowopd mini pretrain --out DIR  (then pass --model DIR)",
    ),
}


def load_backbone(spec: str = "mini-base", device: str = "cpu"):
    """``mini-base`` or a folder written by ``flowopd mini pretrain`` -> a MiniBackbone in eval mode."""
    from flowopd.mini.model import MiniBackbone

    if spec in KNOWN_WEIGHTS:
        ws = KNOWN_WEIGHTS[spec]
        if not ws.present:
            raise FlowOPDError(f"weights {spec!r} are not in this install ({ws.path}); get them with: {ws.how_to_get}")
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
