"""``geneval``: the official GenEval detector (mmdet's Mask2Former Swin-S, the checkpoint GenEval ships) behind the shared
GenEval reward (:mod:`flowopd.reward_models.geneval`): the checkpoint's identity checked by its sha256, mmdet 2 or 3."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.geneval import (
    GENEVAL_CLASSES,
    Detection,
    _GenEvalBase,
    detections_from_arrays,
    geneval_label_map,
    mmdet_result_arrays,
)

MMDET_CONFIG = "mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py"
_MMDET3_CHECKPOINT_URL = (
    "https://download.openmmlab.com/mmdetection/v3.0/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco/"
    "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth"
)


@dataclasses.dataclass(frozen=True)
class KnownCheckpoint:
    """A published mmdet checkpoint: its exact file name, the sha256 prefix in that name, and the mmdet major it loads in."""

    filename: str
    sha256_prefix: str
    mmdet_major: int


# The same training run (20220504_001756) published twice: the mmdet 3.x model zoo re-saved it with the
# refactored transformer-layer keys (open-mmlab/mmdetection#9515), so each loads only in its own major version.
KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    KnownCheckpoint("mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth", "c9d0c4f2", 3),
    KnownCheckpoint("mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth", "743b7d99", 2),
)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verified_checkpoint(folder: Path, mmdet_major: int = 3, hasher: Callable[[Path], str] | None = None) -> Path | None:
    """The known checkpoint in ``folder`` for this mmdet major version, its sha256 checked; ``None`` if there is none.

    The file is unpickled with ``weights_only=False`` (mmdet checkpoints keep
    Python objects in their meta), so only these exact published files, whose
    names carry the first 8 hex digits of their sha256, are accepted.
    """
    wrong_major = None
    for known in KNOWN_CHECKPOINTS:
        path = folder / known.filename
        if not path.is_file():
            continue
        if known.mmdet_major != mmdet_major:
            wrong_major = known
            continue
        digest = (hasher or sha256_of)(path)
        if not digest.startswith(known.sha256_prefix):
            raise FlowOPDError(
                f"refusing to load {path}: its sha256 {digest[:8]}... does not match {known.sha256_prefix}; download it again"
            )
        return path
    if wrong_major is not None:
        wanted = next(k.filename for k in KNOWN_CHECKPOINTS if k.mmdet_major == mmdet_major)
        raise FlowOPDError(
            f"{folder / wrong_major.filename} is the mmdet {wrong_major.mmdet_major}.x checkpoint (its keys do not load in "
            f"mmdet {mmdet_major}.x); download {wanted} into {folder}" + (f" from {_MMDET3_CHECKPOINT_URL}" if mmdet_major == 3 else "")
        )
    return None


class GenEvalMMDet(_GenEvalBase):
    """The official GenEval metric: mmdet Mask2Former Swin-S (COCO) + CLIP ViT-L/14 colours, as djghosh13/geneval.

    mmdet 3.x: config ``mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py``
    from mmdet's installed ``.mim/configs`` (the official evaluator reads the
    same model from mmdet's ``configs/``), ``init_detector`` +
    ``inference_detector`` on BGR arrays (what mmcv's image loading gives the
    official file-based evaluator).
    """

    name = "geneval"
    version = "1-mmdet3-m2f-swin-s"
    description = "official GenEval: mmdet Mask2Former Swin-S (COCO) + CLIP ViT-L/14 colours; partial credit (details.correct = strict)"
    weight_sets = ("geneval-mmdet-mask2former", "clip-vit-large-patch14")
    requires = ("mmdet", "mmcv")
    detector_weight_set = "geneval-mmdet-mask2former"

    @classmethod
    def install_hint(cls) -> str:
        return (
            "pip install 'flowopd[geneval-mmdet]' (mmcv 2.1.0 compiles from source, about 25 min: "
            "MMCV_WITH_OPS=1 pip install --no-build-isolation 'setuptools<70' mmcv==2.1.0; see docs/install.md)"
        )

    @staticmethod
    def config_path() -> Path:
        """The Mask2Former config inside the installed mmdet (``.mim/configs``, or ``configs/`` of a source checkout)."""
        import mmdet

        root = Path(mmdet.__file__).resolve().parent
        for base in (root / ".mim" / "configs", root.parent / "configs"):
            if (base / MMDET_CONFIG).is_file():
                return base / MMDET_CONFIG
        raise FlowOPDError(f"mmdet {mmdet.__version__} has no {MMDET_CONFIG} under {root / '.mim' / 'configs'}; reinstall mmdet 3.x")

    def _checkpoint(self) -> Path:
        import mmdet

        from flowopd.reward_models.weights import get_weight_set

        major = int(str(mmdet.__version__).split(".")[0])
        if major != 3:
            raise FlowOPDError(f"{self.name} needs mmdet 3.x, found {mmdet.__version__}: {self.install_hint()}")
        folder = get_weight_set(self.detector_weight_set).path(self.weights.get(self.detector_weight_set))
        path = verified_checkpoint(folder, major)
        if path is None:
            self.weight_path(self.detector_weight_set)  # the standard one-line "not found; run flowopd weights download"
            raise FlowOPDError(f"{self.name}: no known Mask2Former checkpoint in {folder}; expected {KNOWN_CHECKPOINTS[0].filename}")
        return path

    def _load_detector(self) -> None:
        from mmdet.apis import init_detector

        ckpt_path = self._checkpoint()
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # verified above
        # built without a checkpoint (init_detector would torch.load it with the default weights_only=True)
        self._model = init_detector(str(self.config_path()), None, device=str(self.device))
        missing, _unexpected = self._model.load_state_dict(checkpoint.get("state_dict", checkpoint), strict=False)
        if missing:
            raise FlowOPDError(f"{ckpt_path.name} does not fit {MMDET_CONFIG}: {len(missing)} weights missing (e.g. {missing[0]})")
        meta = checkpoint.get("meta") or {}
        if meta.get("dataset_meta"):
            self._model.dataset_meta = meta["dataset_meta"]
        elif meta.get("CLASSES"):
            self._model.dataset_meta = {"classes": tuple(meta["CLASSES"])}
        classes = list((getattr(self._model, "dataset_meta", None) or {}).get("classes") or [])
        if len(classes) != len(GENEVAL_CLASSES):
            raise FlowOPDError(f"{self.name}: the detector has {len(classes)} classes, expected the 80 COCO classes")
        labels = geneval_label_map(dict(enumerate(classes)))
        self._classnames = [labels[i] for i in range(len(classes))]

    @torch.no_grad()
    def _detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        from mmdet.apis import inference_detector

        if not images:
            return []
        results = inference_detector(self._model, [np.ascontiguousarray(np.asarray(im)[..., ::-1]) for im in images])
        out = []
        for res in results:
            bboxes, labels, masks, scores = mmdet_result_arrays(res)
            out.append(detections_from_arrays(bboxes, labels, masks, scores, self._classnames))
        return out
