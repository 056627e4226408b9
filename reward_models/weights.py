"""Where reward-model weights live, whether they are present, and how to fetch them.

Every real reward model names the *weight sets* it needs (a folder of files:
a hub repository's snapshot, or single files from a URL). A set lives at

1. ``$FLOWOPD_WEIGHTS_<SET>`` when that variable is set (a per-set path
   override; ``<SET>`` is the set name upper-cased with every other
   character turned into ``_``, e.g. ``FLOWOPD_WEIGHTS_CLIP_VIT_LARGE_PATCH14``);
2. otherwise ``<weights dir>/<set name>``, where the weights dir is
   ``$FLOWOPD_WEIGHTS_DIR`` or ``~/.cache/flowopd/weights``.

A reward instance can also be given ``weights={"set name": path}``.
``flowopd weights status`` lists each reward's required files, where they
were looked for and whether they were found; ``flowopd weights download``
fetches them (the hub client for hub sets, HTTPS for URL sets), and fails fast
with one line when the network cannot be reached. Nothing is ever
unpickled: loaders use safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from flowopd.config import env_var_name
from flowopd.errors import FlowOPDError
from flowopd.registry import Registry
from flowopd.runinfo import atomic_file

ENV_DIR = "FLOWOPD_WEIGHTS_DIR"
DEFAULT_DIR = Path("~/.cache/flowopd/weights")
HF_ENDPOINT = "https://huggingface.co"
T2I_COMPBENCH_COMMIT = "1b7094991a57f3c22abdd4f6e8ba6c1a15517073"  # Karine-Huang/T2I-CompBench, the scorers' reference


class WeightsMissingError(FlowOPDError):
    """A reward's weight files are not where they were looked for (the message says how to get them)."""


def weights_dir() -> Path:
    """The weights directory: ``$FLOWOPD_WEIGHTS_DIR`` or ``~/.cache/flowopd/weights``."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR).expanduser()


def env_var(set_name: str) -> str:
    """The per-set override variable, e.g. ``FLOWOPD_WEIGHTS_CLIP_VIT_LARGE_PATCH14``."""
    return env_var_name("FLOWOPD_WEIGHTS_", set_name)


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """A folder of weight files one or more rewards need.

    ``repo`` is a hub repository id (fetched with ``huggingface_hub``) or an
    ``https://`` URL folder whose ``files`` are fetched one by one.
    ``files`` are the files that must be present (``"a|b"``: either will do,
    e.g. ``model.safetensors|pytorch_model.bin``); ``fetch`` (hub only) are
    extra glob patterns to download with them.
    """

    name: str
    repo: str
    files: tuple[str, ...]
    description: str = ""
    revision: str | None = None
    fetch: tuple[str, ...] = ()
    license: str = ""
    archives: tuple[tuple[str, str], ...] = ()  # URL sets: (folder, tar path under repo) whose regular files land in that folder

    @property
    def is_url(self) -> bool:
        return self.repo.startswith(("https://", "http://"))

    def path(self, override: str | Path | None = None) -> Path:
        """Where this set is looked for: the instance override, the env override, else under the weights dir."""
        if override is not None:
            return Path(override).expanduser()
        env = os.environ.get(env_var(self.name))
        return Path(env).expanduser() if env else weights_dir() / self.name

    def where(self, override: str | Path | None = None) -> str:
        """How the path was chosen (for status output)."""
        if override is not None:
            return "argument"
        return f"${env_var(self.name)}" if os.environ.get(env_var(self.name)) else f"${ENV_DIR}" if os.environ.get(ENV_DIR) else "default"

    def missing(self, override: str | Path | None = None) -> list[str]:
        root = self.path(override)
        return [f for f in self.files if not any((root / alt).is_file() for alt in f.split("|"))]

    def require(self, reward: str, override: str | Path | None = None) -> Path:
        """The folder, or a one-line :class:`WeightsMissingError` saying how to get it."""
        root = self.path(override)
        missing = self.missing(override)
        if missing:
            raise WeightsMissingError(
                f"{reward}: weights {self.name!r} not found ({missing[0]} missing in {root}); "
                f"run `flowopd weights download {reward}` or point ${env_var(self.name)} at a folder that has them"
            )
        return root


WEIGHT_SETS: Registry[WeightSet] = Registry("weight set", error=FlowOPDError)


def register_weight_set(ws: WeightSet) -> WeightSet:
    """Add a weight set (plugins may register their own); re-registering the same definition is allowed."""
    WEIGHT_SETS.register(ws.name, ws)
    return ws


def get_weight_set(name: str) -> WeightSet:
    try:
        return WEIGHT_SETS[name]
    except KeyError:
        raise FlowOPDError(f"unknown weight set {name!r}; see `flowopd weights status`") from None


# ------------------------------------------------------------------ the built-in sets

_CLIP_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json")
for _ws in (
    WeightSet(
        "clip-vit-large-patch14",
        "openai/clip-vit-large-patch14",
        (*_CLIP_FILES, "model.safetensors"),
        "OpenAI CLIP ViT-L/14 (CLIPScore, the Aesthetic predictor's embedding, GenEval's colour classifier)",
        license="MIT",
    ),
    WeightSet(
        "clip-vit-base-patch32",
        "openai/clip-vit-base-patch32",
        (*_CLIP_FILES, "model.safetensors"),
        "OpenAI CLIP ViT-B/32 (T2I-CompBench's non-spatial CLIP similarity)",
        license="MIT",
    ),
    WeightSet(
        "blip-vqa-capfilt-large",
        "Salesforce/blip-vqa-capfilt-large",
        ("config.json", "model.safetensors|pytorch_model.bin", "vocab.txt", "tokenizer_config.json"),
        "BLIP ViT-B VQA capfilt-large (T2I-CompBench++'s BLIP-VQA: color, shape, texture, complex)",
        fetch=("*.json", "*.txt"),
        license="BSD-3-Clause",
    ),
    WeightSet(
        "spacy-en-core-web-sm",
        "spacy/en_core_web_sm",
        ("en_core_web_sm-any-py3-none-any.whl",),
        "spaCy en_core_web_sm, the wheel (T2I-CompBench++'s noun-phrase and part-of-speech parser)",
        license="MIT",
    ),
    WeightSet(
        "owlv2-base-patch16-ensemble",
        "google/owlv2-base-patch16-ensemble",
        ("config.json", "model.safetensors|pytorch_model.bin", "preprocessor_config.json", "tokenizer.json|vocab.json"),
        "OWLv2 B/16 open-vocabulary detector (T2I-CompBench++ spatial, 3d_spatial, numeracy, complex in place of UniDet)",
        fetch=("*.json", "*.txt"),
        license="Apache-2.0",
    ),
    WeightSet(
        "dpt-hybrid-midas",
        "Intel/dpt-hybrid-midas",
        ("config.json", "model.safetensors|pytorch_model.bin"),
        "MiDaS v3.0 DPT-Hybrid depth (T2I-CompBench++ 3d_spatial's official depth model, transformers port)",
        license="Apache-2.0",
    ),
    WeightSet(
        "t2i-compbench-lists",
        f"https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/{T2I_COMPBENCH_COMMIT}/examples/dataset",
        ("new_objects.txt", "complex_val_spatial.txt", "complex_val_action.txt"),
        "T2I-CompBench++'s numeracy object list and complex sub-category prompt lists (upstream files at a pinned commit)",
        license="none stated upstream (no LICENSE file at that commit)",
    ),
    WeightSet(
        "clip-vit-h-14-processor",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        ("tokenizer.json", "preprocessor_config.json"),
        "tokenizer and image processor of open_clip ViT-H-14 (PickScore's processor; HPS v2 converted to transformers)",
        fetch=("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"),
        license="MIT",
    ),
    WeightSet(
        "pickscore_v1",
        "yuvalkirstain/PickScore_v1",
        ("config.json", "model.safetensors|pytorch_model.bin"),
        "PickScore v1: CLIP-H fine-tuned on Pick-a-Pic",
        license="MIT",
    ),
    WeightSet(
        "aesthetic-mlp-laion-v2",
        "trl-lib/ddpo-aesthetic-predictor",
        ("aesthetic-model.pth",),
        "LAION improved aesthetic predictor MLP (sac+logos+ava1-l14-linearMSE) on CLIP ViT-L/14 embeddings",
        license="Apache-2.0",
    ),
    WeightSet("hpsv2", "xswu/HPSv2", ("HPS_v2_compressed.pt",), "HPS v2 (open_clip ViT-H-14 fine-tuned on HPD v2)", license="Apache-2.0"),
    WeightSet(
        "hpsv2.1", "xswu/HPSv2", ("HPS_v2.1_compressed.pt",), "HPS v2.1 (open_clip ViT-H-14 fine-tuned on HPD v2.1)", license="Apache-2.0"
    ),
    WeightSet(
        "imagereward_v1",
        "THUDM/ImageReward",
        ("ImageReward.pt", "med_config.json"),
        "ImageReward v1 (BLIP ViT-L + MLP)",
        license="Apache-2.0",
    ),
    WeightSet(
        "bert-base-uncased-tokenizer",
        "google-bert/bert-base-uncased",
        ("vocab.txt", "tokenizer_config.json"),
        "BERT base uncased tokenizer (BLIP's text side, for ImageReward)",
        fetch=("tokenizer.json",),
        license="Apache-2.0",
    ),
    WeightSet(
        "mask2former-swin-small-coco-instance",
        "facebook/mask2former-swin-small-coco-instance",
        ("config.json", "preprocessor_config.json", "model.safetensors|pytorch_model.bin"),
        "Mask2Former Swin-S COCO instance segmentation, transformers port (geneval@hf-m2f)",
        license="CC-BY-NC-4.0 (check the model card)",
    ),
    WeightSet(
        "geneval-mmdet-mask2former",
        "https://download.openmmlab.com/mmdetection/v3.0/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco",
        ("mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth",),
        "the official GenEval detector: mmdet Mask2Former Swin-S COCO checkpoint (the mmdet 3.x re-save of the v2.0 file)",
        license="Apache-2.0",
    ),
    WeightSet(
        "qwen3-vl-8b-instruct",
        "Qwen/Qwen3-VL-8B-Instruct",
        (
            "config.json",
            "model.safetensors.index.json|model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "preprocessor_config.json",
        ),
        "Qwen3-VL-8B-Instruct, the VQA model of GenEval 2's Soft-TIFA (geneval2_soft_tifa, in process)",
        fetch=("*.json", "*.safetensors", "*.txt", "*.jinja"),
        license="Apache-2.0",
    ),
    WeightSet(
        "deqa-score-mix3",
        "zhiyuanyou/DeQA-Score-Mix3",
        ("config.json",),
        "DeQA-Score-Mix3 (mPLUG-Owl2 based; transformers remote code)",
        fetch=("*.json", "*.py", "*.safetensors", "*.model", "*.txt"),
        license="Apache-2.0",
    ),
):
    register_weight_set(_ws)


# ------------------------------------------------------------------ download


def _host(ws: WeightSet) -> tuple[str, int]:
    url = ws.repo if ws.is_url else os.environ.get("HF_ENDPOINT", HF_ENDPOINT)
    parsed = urllib.parse.urlparse(url)
    return parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme == "https" else 80)


def check_reachable(ws: WeightSet, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the set's server cannot be reached (offline machines, closed networks)."""
    if not ws.is_url and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FlowOPDError(f"cannot download {ws.name!r}: HF_HUB_OFFLINE is set; unset it, or copy {ws.repo}'s files into {ws.path()}")
    host, port = _host(ws)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise FlowOPDError(
            f"cannot download {ws.name!r}: {host} is unreachable ({exc.strerror or exc}); "
            f"copy {ws.repo}'s files ({', '.join(ws.files)}) into {ws.path()} or set ${env_var(ws.name)}"
        ) from None


def download(ws: WeightSet, progress: Callable[[str], None] | None = None) -> Path:
    """Fetch a set into its folder (files land whole: the hub client and our URL fetch both write to temp files first)."""
    check_reachable(ws)
    try:
        return _download(ws, progress)
    except urllib.error.URLError as exc:  # HTTPError included: a moved or missing file on the server
        raise FlowOPDError(f"cannot download {ws.name!r} from {ws.repo}: {getattr(exc, 'code', None) or exc.reason}") from None


def _download(ws: WeightSet, progress: Callable[[str], None] | None) -> Path:
    root = ws.path()
    root.mkdir(parents=True, exist_ok=True)
    if ws.archives:
        for folder, tar_path in ws.archives:
            if progress:
                progress(f"{ws.name}: {tar_path}")
            _fetch_archive(f"{ws.repo.rstrip('/')}/{tar_path}", root / folder)
    elif ws.is_url:
        for name in (f.split("|")[0] for f in ws.files):
            target = root / name
            if target.is_file():
                continue
            if progress:
                progress(f"{ws.name}: {name}")
            fetch_file(f"{ws.repo.rstrip('/')}/{name}", target)
    else:
        from huggingface_hub import snapshot_download

        if progress:
            progress(f"{ws.name}: {ws.repo}")
        patterns = list(ws.fetch)
        listing: list[str] | None = None
        for f in ws.files:
            alts = f.split("|")
            if len(alts) > 1 and listing is None:
                from huggingface_hub import list_repo_files

                listing = list_repo_files(ws.repo, revision=ws.revision)
            patterns.append(next((a for a in alts if a in listing), alts[0]) if len(alts) > 1 else f)
        snapshot_download(ws.repo, revision=ws.revision, allow_patterns=patterns, local_dir=root)
    missing = ws.missing()
    if missing:
        raise FlowOPDError(f"downloaded {ws.repo} into {root} but {missing[0]} is still missing; the repository layout may have changed")
    return root


def fetch_file(url: str, target: Path) -> None:
    """Download ``url`` to ``target``; through :func:`atomic_file`, so it lands whole or not at all."""
    with urllib.request.urlopen(url) as src, atomic_file(target) as dst:
        shutil.copyfileobj(src, dst)


def _fetch_archive(url: str, folder: Path) -> None:
    """Download a tar and put its regular files (by base name only: no paths from the archive) into ``folder``, whole or not at all."""
    import tarfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        archive = Path(tmp) / "archive.tar"
        urllib.request.urlretrieve(url, archive)
        staged = Path(tmp) / "files"
        staged.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    src = tar.extractfile(member)
                    with src, open(staged / Path(member.name).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staged, folder)


def status_rows(sets: Mapping[str, WeightSet] | None = None, overrides: Mapping[str, str | Path] | None = None) -> list[dict]:
    """One row per required file: set, file, where it was looked for, how that place was chosen, found or not."""
    rows = []
    overrides = overrides or {}
    for ws in (WEIGHT_SETS if sets is None else sets).values():  # {} (a reward without weights) lists nothing
        root = ws.path(overrides.get(ws.name))
        for f in ws.files:
            rows.append(
                {
                    "set": ws.name,
                    "file": f,
                    "path": str(root / f.split("|")[0]),
                    "chosen_by": ws.where(overrides.get(ws.name)),
                    "found": any((root / alt).is_file() for alt in f.split("|")),
                    "source": ws.repo,
                }
            )
    return rows
