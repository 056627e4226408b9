"""Named benchmark prompt sets: where each upstream file lives, its format, its task tag, and how to get it.

flowopd ships no benchmark prompt files (their licences are their authors').
A named set is read from ``<data dir>/<relpath>``, the upstream layout, where
the data dir is ``$FLOWOPD_DATA_DIR`` (default ``~/.cache/flowopd/data``);
``$FLOWOPD_PROMPTS_<SET>`` points one set at a file of your own. ``flowopd
prompts download NAME`` fetches a set from its upstream URL when online.
Anything that is not a set name is read as a prompt file (``.txt``,
``.jsonl``, or a ``.json`` list).

Sets: ``geneval`` (553 prompts, GenEval metadata), ``geneval2`` (800 prompts,
GenEval2's ``atom_count``, ``vqa_list`` and ``skills``), ``ocr``, ``pickscore``,
``drawbench`` (Flow-GRPO test splits), ``t2i-compbench/<category>`` (8
categories, validation prompts), ``hpsv2/<style>`` (4 styles x 800),
``dpg-bench`` (1065 prompt files joined with the question CSV, which must be
downloaded: :mod:`flowopd.benchmarks.dpg_bench`), ``oneig`` (OneIG-Bench.csv, 1120
EN prompts, with the question and ground-truth files of its ``scripts/``:
:mod:`flowopd.benchmarks.oneig`).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.error
from pathlib import Path

from flowopd.benchmarks.prompts import Prompt, RecordCheck, load_prompt_file
from flowopd.config import env_var_name
from flowopd.errors import FlowOPDError, InputError
from flowopd.registry import Registry
from flowopd.reward_models.weights import fetch_file

DATA_ENV = "FLOWOPD_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/flowopd/data")
FLOW_GRPO = "https://raw.githubusercontent.com/yifan123/flow_grpo/main/dataset"
T2I_COMPBENCH = "https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/main/examples/dataset"
HPD_V2 = "https://huggingface.co/datasets/zhwang/HPDv2/resolve/main/benchmark"
T2I_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
GENEVAL2 = "https://raw.githubusercontent.com/facebookresearch/GenEval2/a6e82d2289e8d418f27f0adee77908b07060eea3"


def data_dir() -> Path:
    """``$FLOWOPD_DATA_DIR`` or ``~/.cache/flowopd/data``."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """An upstream prompt file: its path under the data dir, its task tag, its size, and where it comes from."""

    name: str
    relpath: str
    task: str
    url: str
    size: int | None  # prompts in the upstream file (shown by `flowopd prompts list`); None where we have not counted them
    description: str
    metadata: tuple[tuple[str, str], ...] = ()  # added to every prompt's metadata (e.g. the HPS style)
    check: RecordCheck | None = None  # checks every JSONL line (a ValueError is reported with the file and line)

    @property
    def env_var(self) -> str:
        return env_var_name("FLOWOPD_PROMPTS_", self.name)

    def path(self) -> Path:
        override = os.environ.get(self.env_var)
        return Path(override).expanduser() if override else data_dir() / self.relpath

    def present(self) -> bool:
        return self.path().is_file()

    def missing_reason(self, group: str) -> str:
        """Why the set cannot load, with the command that fetches it (``group``: the name to download)."""
        return f"prompt set {self.name!r} not at {self.path()}; run `flowopd prompts download {group}`"

    def load(self) -> list[Prompt]:
        """The set's prompts, each with the set's task tag and metadata (``set`` = the set's name)."""
        path = self.path()
        if not path.is_file():
            raise InputError(
                f"prompt set {self.name!r} not found at {path}; run `flowopd prompts download {self.name}`, "
                f"or point ${self.env_var} (or ${DATA_ENV}) at a copy of {self.url}"
            )
        prompts = load_prompt_file(path, task=self.task, check=self.check)
        extra = {"set": self.name, **dict(self.metadata)}
        return [dataclasses.replace(p, metadata={**p.metadata, **extra}) for p in prompts]


def check_geneval2_line(record: dict) -> None:
    """A GenEval2 line must carry its Soft-TIFA questions (``vqa_list`` with one skill each): the reward's own check."""
    from flowopd.reward_models.geneval2 import check_geneval2_record

    check_geneval2_record(record)


# the fixed sets: the benchmarks' test splits, then Flow-GRPO's training splits
FIXED_SETS = (
    PromptSet(
        "geneval",
        "geneval/evaluation_metadata.jsonl",
        "compose",
        "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl",
        553,
        "GenEval: 553 compositional prompts in 6 tags with include/exclude clauses",
    ),
    PromptSet(
        "geneval2",
        "geneval2/geneval2_data.jsonl",
        "compose",
        f"{GENEVAL2}/geneval2_data.jsonl",
        800,
        "GenEval 2: 800 compositional prompts (100 per atom count 3-10), each with its Soft-TIFA questions and skills",
        check=check_geneval2_line,
    ),
    PromptSet("ocr", "flow-grpo/ocr/test.txt", "text", f"{FLOW_GRPO}/ocr/test.txt", 1018, "Flow-GRPO visual-text test split"),
    PromptSet(
        "pickscore",
        "flow-grpo/pickscore_sfw/test.txt",
        "preference",
        f"{FLOW_GRPO}/pickscore_sfw/test.txt",
        1024,
        "Flow-GRPO Pick-a-Pic (SFW) test split",
    ),
    PromptSet(
        "drawbench",
        "flow-grpo/drawbench/test.txt",
        "quality",
        f"{FLOW_GRPO}/drawbench/test.txt",
        1000,
        "DrawBench-style prompts (Flow-GRPO)",
    ),
    # Flow-GRPO's training splits: what `prompts:` in a training recipe names for an SD3 model
    PromptSet(
        "geneval-train",
        "flow-grpo/geneval/train_metadata.jsonl",
        "compose",
        f"{FLOW_GRPO}/geneval/train_metadata.jsonl",
        None,
        "Flow-GRPO GenEval-style training prompts (metadata JSONL, the GenEval rules' clauses)",
    ),
    PromptSet("ocr-train", "flow-grpo/ocr/train.txt", "text", f"{FLOW_GRPO}/ocr/train.txt", None, "Flow-GRPO visual-text train split"),
    PromptSet(
        "pickscore-train",
        "flow-grpo/pickscore_sfw/train.txt",
        "preference",
        f"{FLOW_GRPO}/pickscore_sfw/train.txt",
        None,
        "Flow-GRPO Pick-a-Pic (SFW) train split",
    ),
)


def _sets() -> dict[str, PromptSet]:
    sets = list(FIXED_SETS)
    for cat in T2I_CATEGORIES:
        sets.append(
            PromptSet(
                f"t2i-compbench/{cat}",
                f"t2i-compbench/{cat}_val.txt",
                "compose",
                f"{T2I_COMPBENCH}/{cat}_val.txt",
                300,
                f"T2I-CompBench++ {cat} validation prompts",
                (("category", cat),),
            )
        )
    for style in HPS_STYLES:
        sets.append(
            PromptSet(
                f"hpsv2/{style}",
                f"hpsv2/benchmark/{style}.json",
                "preference",
                f"{HPD_V2}/{style}.json",
                800,
                f"HPS v2 benchmark, {style} style",
                (("style", style),),
            )
        )
    return {s.name: s for s in sets}


def _check_prompt_set(name: str, entry: object) -> PromptSet:
    if not isinstance(entry, PromptSet) or entry.name != name:
        raise InputError(f"prompt set {name!r} must be a flowopd.benchmarks.prompt_sets.PromptSet named {name!r}, got {entry!r}")
    return entry


# name -> PromptSet; plugins add theirs through the ``flowopd.prompt_sets`` entry-point group ("module:attribute")
PROMPT_SETS: Registry[PromptSet] = Registry(
    "prompt set",
    {**_sets(), "dpg-bench": "flowopd.benchmarks.dpg_bench:PROMPT_SET", "oneig": "flowopd.benchmarks.oneig:PROMPT_SET"},
    error=InputError,
    entry_point_group="flowopd.prompt_sets",
    check=_check_prompt_set,
)
GROUPS = {"t2i-compbench": [f"t2i-compbench/{c}" for c in T2I_CATEGORIES], "hpsv2": [f"hpsv2/{s}" for s in HPS_STYLES]}


def resolve(spec: str, task: str | None = None) -> list[Prompt]:
    """A set name (``geneval``), a group (``hpsv2``: its sets in order), or a prompt file path."""
    if spec in PROMPT_SETS:
        return PROMPT_SETS[spec].load()
    if spec in GROUPS:
        return [p for name in GROUPS[spec] for p in PROMPT_SETS[name].load()]
    path = Path(spec)
    if path.suffix in (".txt", ".jsonl", ".json") or path.exists():
        return load_prompt_file(path, task=task)
    import difflib

    close = difflib.get_close_matches(spec, [*PROMPT_SETS, *GROUPS], n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `flowopd prompts list`, or pass a .txt/.jsonl/.json file"
    raise InputError(f"unknown prompt set {spec!r}; {hint}")


def download(name: str) -> list[Path]:
    """Fetch a set (or every set of a group) from upstream into the data dir; files land whole; one-line errors."""
    names = GROUPS.get(name, [name])
    for n in names:
        if n not in PROMPT_SETS:
            resolve(n)  # raises with close matches
    out = []
    for n in names:
        ps = PROMPT_SETS[n]
        target = ps.path()
        if target.is_file():
            out.append(target)
            continue
        try:
            fetch_file(ps.url, target)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or exc
            raise FlowOPDError(f"cannot download prompt set {n!r} from {ps.url} ({reason}); copy the file to {target}") from None
        out.append(target)
    return out
