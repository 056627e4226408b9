"""Reproducibility and safe writes: run metadata (config, seed, versions, git hash) and atomic outputs."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("flowopd", "torch", "diffusers", "transformers", "peft", "accelerate", "numpy", "rapidfuzz")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_hash() -> str | None:
    """The source checkout's commit (with ``-dirty`` if it has uncommitted changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_info(config: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """The record written beside every run's outputs."""
    return {
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "git": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file and rename (:func:`atomic_file`), so no reader sees half a file."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def parse_jsonl(path: str | Path, text: str, fix: str) -> list[tuple[int, Any]]:
    """The objects of JSON Lines ``text`` (read from ``path``) with their line numbers, blank lines skipped; a line that is
    not JSON is refused in one line naming ``path:line`` and ``fix``."""
    from flowopd.errors import InputError

    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg}); {fix}") from None
    return out


def check_output_dir(path: str | Path, marker: str) -> None:
    """Refuse an existing, non-empty folder that is not one of ours (it lacks ``marker``): we replace output folders whole."""
    from flowopd.errors import FlowOPDError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FlowOPDError(f"output {path} exists and is a file; pass a folder path")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise FlowOPDError(f"output folder {path} exists and holds other files (no {marker}); pass a new or empty folder")
    check_writable(path.parent)


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and write a scratch file in it, so a command fails before its compute, not after."""
    from flowopd.errors import FlowOPDError

    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise FlowOPDError(f"cannot write in {folder}: {p} is a file; pass an output path in a writable folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise FlowOPDError(f"cannot write in {folder} ({exc.strerror or exc}); pass an output path in a writable folder") from None


@contextlib.contextmanager
def atomic_dir(path: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` whole, on error it vanishes.

    With ``marker``, an existing non-empty ``path`` is replaced only if it contains
    that file (it is an earlier output of the same kind), never a user's folder.
    """
    path = Path(path)
    if marker is not None:
        check_output_dir(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _usual_permissions(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usual_permissions(root: Path) -> None:
    """Temp folders and files are private (0700/0600); give the output the permissions a plain mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; it is renamed onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        _usual_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_launcher() -> None:
    """Refuse ``WORLD_SIZE`` > 1 in a process no launcher started (accelerate would fail on a missing ``MASTER_ADDR``)."""
    import os

    from flowopd.errors import FlowOPDError

    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1 and not os.environ.get("MASTER_ADDR"):
        raise FlowOPDError(
            f"WORLD_SIZE={world} is set but no launcher started this process (no MASTER_ADDR); run "
            f"`accelerate launch --num_processes {world} -m flowopd.cli.main ...`, or unset WORLD_SIZE for one process"
        )
