"""Prompt files: GenEval / GenEval2 metadata JSONL, plain text (one prompt per line), and JSON lists (the HPS v2 benchmark).

A malformed line is reported with its file and line number, and what a good
line looks like. The records keep any metadata the line carries (``tag``,
``include``, ``exclude``...) and a task tag when the file says it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowopd.errors import InputError
from flowopd.runinfo import parse_jsonl

RecordCheck = Callable[[dict[str, Any]], None]  # raises ValueError saying what is wrong with a JSONL record


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt with its metadata and task tag (``None`` when the file does not say)."""

    text: str
    metadata: dict[str, Any]
    task: str | None = None


def _jsonl(path: Path, lines: list[str], check: RecordCheck | None = None) -> list[Prompt]:
    from flowopd.reward_models.geneval2 import check_geneval2_record
    from flowopd.reward_models.geneval_rules import validate_metadata

    out = []
    for n, rec in parse_jsonl(path, "\n".join(lines), 'each line must be one object like {"prompt": "..."}'):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise InputError(f'{path}:{n}: each line needs a non-empty string "prompt" field')
        try:
            if "include" in rec:  # GenEval clauses
                validate_metadata(rec)
            if "vqa_list" in rec:  # GenEval2 questions
                check_geneval2_record(rec)
            if check is not None:
                check(rec)
        except ValueError as exc:
            raise InputError(f"{path}:{n}: {exc}") from None
        meta = {k: v for k, v in rec.items() if k not in ("prompt", "task")}
        out.append(Prompt(rec["prompt"], meta, rec.get("task")))
    return out


def _json_list(path: Path, text: str) -> list[Prompt]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a .json prompt file is a list of strings") from None
    if not isinstance(items, list):
        raise InputError(f"{path}: a .json prompt file must be a list of prompt strings (or of objects with a 'prompt')")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            out.append(Prompt(item["prompt"], {k: v for k, v in item.items() if k not in ("prompt", "task")}, item.get("task")))
        elif isinstance(item, str) and item.strip():
            out.append(Prompt(item.strip(), {}))
        else:
            raise InputError(f"{path}: item {i} is not a non-empty prompt string (or an object with a 'prompt')")
    return out


def load_prompt_file(path: str | Path, task: str | None = None, check: RecordCheck | None = None) -> list[Prompt]:
    """Read a ``.jsonl`` (GenEval metadata format), ``.txt`` or ``.json`` (a list of prompts) file.

    ``check`` is called on every ``.jsonl`` record; the ``ValueError`` it raises is reported with the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist; pass a .txt (one prompt per line) or .jsonl file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the prompt file as UTF-8") from None
    if path.suffix == ".jsonl":
        prompts = _jsonl(path, lines, check)
    elif path.suffix == ".txt":
        prompts = [Prompt(line.strip(), {}, task) for line in lines if line.strip()]
    elif path.suffix == ".json":
        prompts = _json_list(path, "\n".join(lines))
    else:
        raise InputError(
            f"{path}: unknown prompt file type {path.suffix!r}; use .txt (one prompt per line), .jsonl (GenEval metadata) or .json (a list)"
        )
    if not prompts:
        raise InputError(f"{path}: no prompts in the file")
    return [p if p.task or not task else dataclasses.replace(p, task=task) for p in prompts]
