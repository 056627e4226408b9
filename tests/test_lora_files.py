"""LoRA files are byte-stable: the same tensors and metadata give the same sha256 in every process."""

import hashlib
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, safe_open

SCRIPT = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from flowopd.lora import canonical_header
path = Path(sys.argv[1])
save_file({"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3)}, path, metadata={"format": "pt", "lora_adapter_metadata": "{}"})
if sys.argv[2] == "fix":
    canonical_header(path)
"""


def _hashes(tmp_path, mode, n=6):
    out = []
    for i in range(n):  # safetensors orders the metadata by a per-process hash seed: 2 keys swap in about half the processes
        path = tmp_path / f"{mode}-{i}.safetensors"
        subprocess.run([sys.executable, "-c", SCRIPT, str(path), mode], check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
        out.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def test_the_header_is_canonical_in_every_process(tmp_path):
    """Without canonical_header, 6 processes agree only with probability 1/32 (measured: 3 and 3 of 6 differed)."""
    fixed = _hashes(tmp_path, "fix")
    assert len(set(fixed)) == 1
    with safe_open(tmp_path / "fix-0.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt", "lora_adapter_metadata": "{}"}
    tensors = load_file(tmp_path / "fix-0.safetensors")
    assert torch.equal(tensors["b"], torch.arange(6.0).reshape(2, 3)) and torch.equal(tensors["a"], torch.ones(3))


def test_truncated_weights_are_one_line_naming_the_file(tiny_policy_dir, tiny_teachers, tmp_path):
    """Issue 15 (bare errors): a truncated LoRA or base raised a bare `SafetensorError` / `OSError`."""
    import shutil

    from flowopd.errors import FlowOPDError
    from flowopd.lora import LORA_FILE, load_lora
    from flowopd.mini.model import MiniBackbone

    lora = shutil.copytree(tiny_teachers["text"], tmp_path / "lora")
    (lora / LORA_FILE).write_bytes((lora / LORA_FILE).read_bytes()[:200])
    model = MiniBackbone.from_pretrained(tiny_policy_dir)
    with pytest.raises(FlowOPDError, match=re.escape(f"{lora / LORA_FILE} is truncated or corrupt") + ".*rerun the command that wrote it"):
        load_lora(model.transformer, lora, "t")
    base = shutil.copytree(tiny_policy_dir, tmp_path / "base")
    weights = next((base / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FlowOPDError, match=re.escape(f"{weights} is truncated or corrupt")):
        MiniBackbone.from_pretrained(base)
