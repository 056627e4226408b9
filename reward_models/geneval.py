"""GenEval rewards: a COCO instance segmenter + a CLIP colour classifier feeding the GenEval rules engine.

Two detectors make two metrics, each named (SPEC section 7):

- ``geneval`` (:class:`~flowopd.reward_models.geneval_mmdet.GenEvalMMDet`): the official detector, mmdet's Mask2Former
  Swin-S COCO instance model, through mmdet 3.x ``init_detector`` /
  ``inference_detector`` (the optional extra ``flowopd[geneval-mmdet]``);
- ``geneval@hf-m2f`` (:class:`GenEvalHFMask2Former`): the transformers port
  ``facebook/mask2former-swin-small-coco-instance`` (no compiled extension).

Both turn every candidate instance (class, confidence, mask, box from the mask)
into detections and hand them to :mod:`flowopd.reward_models.geneval_rules`,
which applies the official thresholds (> 0.3, > 0.9 for ``counting``), the
16-per-class cap, no NMS, and both rules. ``raw`` is the partial-credit training
reward in [0, 1]; ``details["correct"]`` is the official strict verdict that
evaluation aggregates.

Colour follows djghosh13/geneval ``evaluation/evaluate_images.py``
(``ImageCrops`` and ``color_classification``): the object's mask pasted on a
``#999`` grey background, cropped to its box, classified zero-shot by CLIP
ViT-L/14 (OpenAI weights) over the 10 ``COLORS``; each colour's text embedding
is the mean of three L2-normalised template embeddings, re-normalised
(clip_benchmark ``zero_shot_classifier``), and the colour is the argmax of the
cosine similarity with the crop's normalised image embedding
(clip_benchmark ``run_classification``). It runs only when a clause asks for a
colour, and the per-class text classifier is cached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models import geneval_rules
from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.clip_rewards import projected_features

# GenEval's class names in the detector's (mmdet COCO) label order: djghosh13/geneval
# evaluation/object_names.txt, which the official evaluator indexes by mmdet label id.
# They are mmdet's COCO names except three renamed for prompts: mouse -> computer mouse,
# remote -> tv remote, keyboard -> computer keyboard.
GENEVAL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote", "computer keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# Other spellings of the COCO instance classes (mmdet / detectron2 / transformers configs, Pascal VOC) -> GenEval's.
CLASS_ALIASES: dict[str, str] = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "sofa": "couch",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "hair dryer": "hair drier",
}

# evaluate_images.py: COLORS, the three templates of color_classification, ImageCrops' default bgcolor "#999".
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES: tuple[str, ...] = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")
CROP_BACKGROUND: tuple[int, int, int] = (0x99, 0x99, 0x99)

# Candidates at or below the lowest official threshold can never count; the engine applies the real ones.
DETECTION_FLOOR = geneval_rules.THRESHOLD


@dataclasses.dataclass
class Detection:
    """One candidate instance: GenEval class, box ``(x0, y0, x1, y1)`` in pixels, confidence, bool mask ``[H, W]``."""

    cls: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


# ------------------------------------------------------------------ class names


def _normalize_label(label: str) -> str:
    return " ".join(str(label).lower().replace("_", " ").replace("-", " ").split())


def geneval_label_map(id2label: Mapping[Any, str]) -> dict[int, str]:
    """A detector's ``{label id: name}`` -> ``{label id: GenEval class}``; every one of the 80 classes must appear once.

    A label that is neither a GenEval class nor a known alias is an error, not a
    guess: a detector whose classes cannot be matched would silently never find
    some objects.
    """
    out: dict[int, str] = {}
    for key, label in id2label.items():
        name = _normalize_label(label)
        name = CLASS_ALIASES.get(name, name)
        if name not in GENEVAL_CLASSES:
            raise FlowOPDError(f"detector label {key}={label!r} is not one of GenEval's 80 COCO classes; use a COCO instance model")
        out[int(key)] = name
    missing = [c for c in GENEVAL_CLASSES if c not in out.values()]
    if missing or len(out) != len(GENEVAL_CLASSES):
        raise FlowOPDError(f"detector labels must be the 80 COCO instance classes once each; missing {missing[:3]}, got {len(out)} labels")
    return out


# ------------------------------------------------------------------ boxes and mmdet results


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` bool masks -> ``[N, 4]`` float boxes ``(x0, y0, x1 + 1, y1 + 1)`` (mmdet ``mask2bbox``); empty masks give zeros."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        xs = np.flatnonzero(m.any(axis=0))
        ys = np.flatnonzero(m.any(axis=1))
        if len(xs) and len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def detections_from_arrays(
    bboxes: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    classnames: Sequence[str] = GENEVAL_CLASSES,
    floor: float = DETECTION_FLOOR,
) -> list[Detection]:
    """mmdet-style arrays -> detections above ``floor``, most confident first.

    ``bboxes`` is ``[N, 5]`` (``x0, y0, x1, y1, score``, mmdet 2.x) or ``[N, 4]``
    with ``scores`` ``[N]`` (mmdet 3.x ``pred_instances``); ``labels`` ``[N]``
    index ``classnames``; ``masks`` ``[N, H, W]`` (optional).
    """
    bboxes = np.asarray(bboxes, dtype=np.float64)
    if bboxes.size == 0:
        bboxes = bboxes.reshape(0, 5 if scores is None else 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if scores is None:
        if bboxes.shape[1] != 5:
            raise ValueError(f"bboxes must be [N, 5] (with scores) when no scores are given, got {bboxes.shape}")
        scores = bboxes[:, 4]
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (len(bboxes) == len(labels) == len(scores)) or (masks is not None and len(masks) != len(labels)):
        raise ValueError(f"mmdet result arrays disagree: {len(bboxes)} boxes, {len(labels)} labels, {len(scores)} scores")
    out = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] <= floor:
            continue
        label = int(labels[i])
        if not 0 <= label < len(classnames):
            raise ValueError(f"label {label} out of range for {len(classnames)} classes")
        box = tuple(float(v) for v in bboxes[i, :4])
        mask = None if masks is None else np.asarray(masks[i], dtype=bool)
        out.append(Detection(classnames[label], box, float(scores[i]), mask))  # type: ignore[arg-type]
    return out


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "to_ndarray"):  # mmdet BitmapMasks
        return x.to_ndarray()
    return np.asarray(x)


def mmdet_result_arrays(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """One image's mmdet result -> ``(bboxes [N, 4], labels [N], masks [N, H, W] or None, scores [N])``.

    Accepts mmdet 3.x ``DetDataSample`` (``pred_instances`` with ``bboxes``,
    ``scores``, ``labels``, ``masks``) and mmdet 2.x ``(bbox_result,
    segm_result)``: per-class lists of ``[n, 5]`` arrays and of masks, as the
    official evaluator reads them.
    """
    inst = getattr(result, "pred_instances", None)
    if inst is not None:
        bboxes = _to_numpy(inst.bboxes).reshape(-1, 4)
        masks = getattr(inst, "masks", None)
        masks = None if masks is None else _to_numpy(masks)
        return bboxes, _to_numpy(inst.labels).reshape(-1), masks, _to_numpy(inst.scores).reshape(-1)
    bbox_result, segm_result = (result[0], result[1] if len(result) > 1 else None) if isinstance(result, tuple) else (result, None)
    boxes, labels, masks = [], [], []
    for label, per_class in enumerate(bbox_result):
        per_class = np.asarray(per_class).reshape(-1, 5)
        boxes.append(per_class)
        labels.append(np.full(len(per_class), label, dtype=np.int64))
        if segm_result is not None:
            masks.extend(np.asarray(m, dtype=bool) for m in segm_result[label])
    b = np.concatenate(boxes) if boxes else np.zeros((0, 5))
    lab = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    m = np.stack(masks) if segm_result is not None and masks else None
    return b[:, :4], lab, m, b[:, 4]


# ------------------------------------------------------------------ colour


class ClipColorClassifier:
    """GenEval's zero-shot colour classifier on transformers CLIP (evaluate_images.py ``color_classification``)."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, device: torch.device | str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = torch.device(device)
        self._classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_classifier(self, classname: str) -> torch.Tensor:
        """``[10, D]``: per colour, the normalised mean of the normalised embeddings of the three templates (cached per class)."""
        if classname not in self._classifiers:
            texts = [t.format(c=c, classname=classname) for c in COLORS for t in COLOR_TEMPLATES]
            tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            emb = projected_features(self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
            emb = torch.nn.functional.normalize(emb.float(), dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(dim=1)
            self._classifiers[classname] = torch.nn.functional.normalize(emb, dim=-1)
        return self._classifiers[classname]

    @staticmethod
    def crops(image: np.ndarray, objects: Sequence[tuple[Sequence[float], np.ndarray | None]]) -> list[Any]:
        """evaluate_images.py ``ImageCrops``: the mask composited on ``#999`` grey, then ``PIL.Image.crop(box)``."""
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
        blank = Image.new("RGB", pil.size, color=CROP_BACKGROUND)
        out = []
        for box, mask in objects:
            if mask is not None:
                if tuple(mask.shape) != tuple(image.shape[:2]):
                    raise ValueError(f"mask shape {tuple(mask.shape)} does not match image {tuple(image.shape[:2])}")
                im = Image.composite(pil, blank, Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255))
            else:
                im = pil
            x0, y0, x1, y1 = (round(float(v)) for v in box[:4])  # PIL rounds crop boxes the same way
            # keep at least one pixel (the official code would fail on an empty crop)
            out.append(im.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))))
        return out

    @torch.no_grad()
    def image_embeddings(self, crops: Sequence[Any]) -> torch.Tensor:
        """``[N, D]`` L2-normalised CLIP image embeddings of PIL crops."""
        pixels = self.image_processor(images=list(crops), return_tensors="pt")["pixel_values"].to(self.device)
        pixels = pixels.to(next(self.model.parameters()).dtype)
        emb = projected_features(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def similarities(self, image: np.ndarray, objects: Sequence[tuple[Sequence[float], np.ndarray | None]], classname: str) -> torch.Tensor:
        """``[N, 10]`` cosine similarities between each object's crop and each colour."""
        if not objects:
            return torch.zeros(0, len(COLORS))
        return (self.image_embeddings(self.crops(image, objects)) @ self.text_classifier(classname).T).cpu()

    def classify(self, image: np.ndarray, objects: Sequence[tuple[Sequence[float], np.ndarray | None]], classname: str) -> list[str]:
        """One colour per object (argmax over ``COLORS``)."""
        return [COLORS[int(i)] for i in self.similarities(image, objects, classname).argmax(dim=1)]


# ------------------------------------------------------------------ the shared reward


class _GenEvalBase(RewardModel):
    """A detector (subclass) + the colour classifier + the rules engine.

    Subclasses implement :meth:`_load_detector` and :meth:`_detect`. Images
    without usable GenEval metadata are a ``ValueError``; a detector failure
    raises (there is no placeholder score).
    """

    needs_metadata = True
    higher_is_better = True
    clip_weight_set = "clip-vit-large-patch14"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._colors: ClipColorClassifier | None = None

    # ----------------------------------------------------------- lifecycle

    def load(self) -> None:
        self._load_detector()
        self._load_clip()

    def _load_detector(self) -> None:
        raise NotImplementedError

    def _detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Every candidate instance above :data:`DETECTION_FLOOR`, per image."""
        raise NotImplementedError

    def _load_clip(self) -> None:
        from flowopd.reward_models.clip_rewards import load_clip_image_processor, load_clip_model, load_clip_tokenizer

        path = self.weight_path(self.clip_weight_set)
        self._colors = ClipColorClassifier(
            load_clip_model(path, self.device), load_clip_tokenizer(path), load_clip_image_processor(path), self.device
        )

    # ----------------------------------------------------------- scoring

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return isinstance(metadata, Mapping) and isinstance(metadata.get("include"), list) and bool(metadata["include"])

    def _color_fn(self, image: np.ndarray, masks: Mapping[int, np.ndarray | None]) -> geneval_rules.ColorFn:
        """The engine's colour callback: CLIP on the objects it asks about, each object classified once."""

        def classify(objects: list[geneval_rules.DetectedObject], classname: str) -> list[str]:
            todo = [o for o in objects if o.color is None]
            if todo:
                assert self._colors is not None
                colors = self._colors.classify(image, [(o.box, masks.get(id(o))) for o in todo], classname)
                for o, c in zip(todo, colors):
                    o.color = c
            return [str(o.color) for o in objects]

        return classify

    def _score(self, images, prompts, metadata):
        metas = self._checked_metadata(metadata, geneval_rules.validate_metadata)  # before the detector runs
        detections = self._detect(list(images))
        if len(detections) != len(metas):
            raise RuntimeError(f"{self.name}: detector returned {len(detections)} results for {len(metas)} images")
        raws, details = [], []
        for image, meta, dets in zip(images, metas, detections):
            by_class: dict[str, list[geneval_rules.DetectedObject]] = {}
            masks: dict[int, np.ndarray | None] = {}
            objects = []
            for d in dets:
                obj = geneval_rules.DetectedObject(d.box, d.score)
                by_class.setdefault(d.cls, []).append(obj)
                masks[id(obj)] = d.mask
                objects.append((d.cls, obj))
            res = geneval_rules.evaluate(by_class, meta, self._color_fn(np.asarray(image), masks))
            raws.append(float(res.score))
            dets_out = []
            for cls, obj in objects:
                rec: dict[str, Any] = {"class": cls, "box": [round(v, 2) for v in obj.box], "score": round(obj.score, 4)}
                if obj.color is not None:
                    rec["color"] = obj.color
                dets_out.append(rec)
            details.append({"correct": bool(res.correct), "tag": meta.get("tag"), "reasons": list(res.reasons), "detections": dets_out})
        return raws, details


# ------------------------------------------------------------------ transformers Mask2Former


class GenEvalHFMask2Former(_GenEvalBase):
    """GenEval with transformers' Mask2Former Swin-S COCO instance model: ``geneval@hf-m2f``.

    Per image, every query-class pair kept by the image processor's
    ``post_process_instance_segmentation`` (top ``num_queries`` pairs, score =
    class probability x mean mask probability, as mmdet's Mask2Former
    ``instance_postprocess``) above :data:`DETECTION_FLOOR` becomes a detection,
    its box taken from its mask. Not the official detector: scores differ from
    ``geneval``, so it is a different metric.
    """

    name = "geneval@hf-m2f"
    version = "1-m2f-swin-s"
    description = (
        "GenEval rules on transformers Mask2Former Swin-S (COCO) + CLIP ViT-L/14 colours; partial credit (details.correct = strict)"
    )
    weight_sets = ("mask2former-swin-small-coco-instance", "clip-vit-large-patch14")
    detector_weight_set = "mask2former-swin-small-coco-instance"

    def _load_detector(self) -> None:
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        path = self.weight_path(self.detector_weight_set)
        self._processor = Mask2FormerImageProcessor.from_pretrained(path)
        self._processor_kwargs: dict[str, Any] = {}
        size = getattr(self._processor, "size", None)
        shortest = size.get("shortest_edge") if isinstance(size, Mapping) else getattr(size, "shortest_edge", None)
        longest = size.get("longest_edge") if isinstance(size, Mapping) else getattr(size, "longest_edge", None)
        if shortest and not longest:  # an older config ("size": 384): the processor's documented default longest edge
            self._processor_kwargs["size"] = {"shortest_edge": shortest, "longest_edge": getattr(self._processor, "_max_size", 1333)}
        self._model = Mask2FormerForUniversalSegmentation.from_pretrained(path).to(self.device).eval()
        self._labels = geneval_label_map(self._model.config.id2label)

    @torch.no_grad()
    def _detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        if not images:
            return []
        if len({np.shape(im) for im in images}) > 1:  # padding a mixed batch would shift the masks: one at a time
            return [d for im in images for d in self._detect([im])]
        inputs = self._processor(images=[np.asarray(im) for im in images], return_tensors="pt", **self._processor_kwargs)
        dtype = next(self._model.parameters()).dtype
        pixel_mask = inputs.get("pixel_mask")
        outputs = self._model(
            pixel_values=inputs["pixel_values"].to(self.device, dtype),
            pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device),
        )
        sizes = [tuple(np.shape(im)[:2]) for im in images]
        results = self._processor.post_process_instance_segmentation(
            outputs, threshold=DETECTION_FLOOR, target_sizes=sizes, return_binary_maps=True
        )
        out = []
        for res in results:
            segments = res["segments_info"]
            if not segments:
                out.append([])
                continue
            masks = res["segmentation"].bool().cpu().numpy()
            boxes = boxes_from_masks(masks)
            dets = [
                Detection(self._labels[int(s["label_id"])], tuple(float(v) for v in box), float(s["score"]), mask)  # type: ignore[arg-type]
                for s, box, mask in zip(segments, boxes, masks)
                if float(s["score"]) > DETECTION_FLOOR
            ]
            out.append(sorted(dets, key=lambda d: -d.score))
        return out
