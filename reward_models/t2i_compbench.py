"""T2I-CompBench++ spatial, 3d_spatial, numeracy and complex: the official formulas over an open-vocabulary detector.

The official detector is UniDet (detectron2 Cascade R-CNN; ``UniDet_eval/experts/model_bank.py``), which does not
install here. These rewards run OWLv2 (``google/owlv2-base-patch16-ensemble``, transformers'
``Owlv2ForObjectDetection``) in its place and are **named apart** (``@owlv2``): their scores are the official formulas
(:mod:`flowopd.reward_models.t2i_compbench_rules`) on other detections, so a number is not the paper's number.

How the detector stands in for UniDet (``UniDet_eval/2D_spatial_eval.py`` L233-257 and notes/bench19 section 8):

- it is queried with the parsed object names (and ``person``), so a detection's label is the name it answers: UniDet's
  vocabulary quirks (no ``table``, no plurals) are gone;
- confidence is OWLv2's sigmoid score (lower than UniDet's: the 0.25 x confidence terms, and 2D's cut at 0.5, move);
  kept above 0.1 (UniDet's hard-coded test threshold), one label per box, class-wise NMS at IoU 0.5 (detectron2's),
  at most 300, best first;
- OWLv2 pads to a square at the bottom and right, so its boxes are scaled by the long side, then clipped to the image
  and rescaled to the 479-px detector frame, where the 150-px and IoU rules apply.

Depth (3d_spatial) is the official model: MiDaS v3.0 DPT-Hybrid (``Intel/dpt-hybrid-midas``, ``DPTForDepthEstimation``),
fed as ``UniDet_eval/experts/depth/models.py`` L89-123 feeds it: a 480 x 480 bilinear squash, mean = std = 0.5; the
output min-max normalised, bilinearly resized (align_corners) to the image, kept at 8 bits as the saved PNG, then resized
to the detector frame (3D_spatial_eval.py L187-203, ``generate_dataset_3d.py`` L45-54).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.t2i_compbench_rules import (
    NUMERACY_ALIASES,
    RELATIONS_2D,
    RELATIONS_3D,
    SCORE_THRESHOLD,
    Det,
    ParseError,
    Token,
    complex_group,
    complex_key,
    complex_objects,
    detector_frame,
    merge_duplicates,
    numeracy_score,
    parse_counts,
    read_object_vocabulary,
    relation_in,
    simple_objects,
    spatial_2d_score,
    spatial_3d_score,
    three_in_one,
)

DETECTOR_SET = "owlv2-base-patch16-ensemble"
DEPTH_SET = "dpt-hybrid-midas"
LISTS_SET = "t2i-compbench-lists"
SPACY_SET = "spacy-en-core-web-sm"
NMS_IOU, MAX_DETECTIONS, DEPTH_SIZE = 0.5, 300, 480


# ----------------------------------------------------------------------------- the detector


def class_wise_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float = NMS_IOU) -> list[int]:
    """Indices kept by greedy NMS within each label (detectron2's ``batched_nms``: drop IoU > ``iou``), best first."""
    order = scores.argsort(descending=True).tolist()
    kept: list[int] = []
    for i in order:
        if all(labels[k] != labels[i] or _iou(boxes[i], boxes[k]) <= iou for k in kept):
            kept.append(i)
    return kept


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod()
    union = (a[2:] - a[:2]).clamp(min=0).prod() + (b[2:] - b[:2]).clamp(min=0).prod() - inter
    return float(inter / union) if union > 0 else 0.0


class OwlDetector:
    """OWLv2 queried with object names; :meth:`detect` gives :class:`Det` s in UniDet's 479-px frame, best first."""

    def __init__(self, folder: Path, device: torch.device, threshold: float = SCORE_THRESHOLD):
        import transformers

        image_cls = getattr(transformers, "Owlv2ImageProcessorPil", None) or transformers.Owlv2ImageProcessor
        self.processor = image_cls.from_pretrained(str(folder))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.model = transformers.Owlv2ForObjectDetection.from_pretrained(str(folder)).float().to(device).eval()
        self.device, self.threshold = device, threshold
        self.max_tokens = self.model.config.text_config.max_position_embeddings  # 16: OWLv2's query length

    @torch.no_grad()
    def detect(self, image: np.ndarray, queries: Sequence[str]) -> list[Det]:
        if not queries:
            return []
        h, w = image.shape[:2]
        text = self.tokenizer(list(queries), padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt")
        pixels = self.processor(images=[image], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        out = self.model(
            input_ids=text["input_ids"].to(self.device),
            attention_mask=text["attention_mask"].to(self.device),
            pixel_values=pixels.to(self.device, torch.float32),
        )
        probs = out.logits[0].float().sigmoid().cpu()  # [boxes, queries]
        scores, labels = probs.max(dim=-1)
        cx, cy, bw, bh = out.pred_boxes[0].float().cpu().unbind(-1)
        side = float(max(h, w))  # the padded square
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * side
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], -1)
        fw, fh = detector_frame(w, h)
        boxes = boxes * torch.tensor([fw / w, fh / h, fw / w, fh / h])
        keep = (scores > self.threshold).nonzero().flatten()
        chosen = [int(keep[i]) for i in class_wise_nms(boxes[keep], scores[keep], labels[keep])][:MAX_DETECTIONS]
        return [Det(queries[int(labels[i])], float(scores[i]), tuple(float(v) for v in boxes[i])) for i in chosen]


# ----------------------------------------------------------------------------- depth


class DepthModel:
    """MiDaS DPT-Hybrid relative inverse depth, normalised to [0, 1] at 8 bits, in the detector frame (larger = nearer)."""

    def __init__(self, folder: Path, device: torch.device):
        from transformers import DPTForDepthEstimation

        self.model = DPTForDepthEstimation.from_pretrained(str(folder)).float().to(device).eval()
        self.device = device

    @staticmethod
    def pixels(image: np.ndarray) -> torch.Tensor:
        """``Resize([480, 480])`` (PIL bilinear, aspect not kept) -> [0, 1] -> Normalize(0.5, 0.5) (depth/models.py)."""
        from PIL import Image

        resized = Image.fromarray(np.asarray(image)).convert("RGB").resize((DEPTH_SIZE, DEPTH_SIZE), Image.BILINEAR)
        return (torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1) - 0.5) / 0.5

    @torch.no_grad()
    def depth_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not len(images):
            return []
        batch = torch.stack([self.pixels(im) for im in images]).to(self.device)
        predicted = self.model(pixel_values=batch).predicted_depth.float().cpu()  # [B, h, w]
        return [to_detector_frame(d, im.shape[1], im.shape[0]) for d, im in zip(predicted, images)]


def to_detector_frame(depth: torch.Tensor, width: int, height: int) -> np.ndarray:
    """3D_spatial_eval.py L199-203 then generate_dataset_3d.py L45-54: min-max to [0, 1], bilinear (align_corners) to the
    image size, 8-bit as the PNG (PIL truncates), PIL bilinear to the detector frame, / 255. A flat map is all zeros."""
    from PIL import Image

    span = depth.max() - depth.min()
    d = (depth - depth.min()) / span if span > 0 else torch.zeros_like(depth)
    d = torch.nn.functional.interpolate(d[None, None], size=(height, width), mode="bilinear", align_corners=True)[0, 0]
    png = Image.fromarray(np.clip(255.0 * d.numpy(), 0, 255).astype(np.uint8), mode="L")
    return np.asarray(png.resize(detector_frame(width, height), Image.BILINEAR), dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------- the rewards


def spacy_tokens(nlp: Any, prompt: str) -> list[Token]:
    """The prompt's spaCy tokens as (text, pos_, space after)."""
    return [Token(t.text, t.pos_, bool(t.whitespace_)) for t in nlp(prompt)]


def read_lists(folder: Path) -> tuple[tuple[list[str], list[str]], set[str], set[str]]:
    """``new_objects.txt`` (singulars, plurals) and the complex spatial / action prompt keys (3_in_1.py L45-50)."""
    vocab = read_object_vocabulary((folder / "new_objects.txt").read_text())
    spatial = {complex_key(line) for line in (folder / "complex_val_spatial.txt").read_text().splitlines() if line.strip()}
    action = {complex_key(line) for line in (folder / "complex_val_action.txt").read_text().splitlines() if line.strip()}
    return vocab, spatial, action


class _T2IDetectionReward(RewardModel):
    """Shared: spaCy (the official parser, its wheel a weight set), OWLv2, one image at a time; a prompt the official
    script cannot parse gives a failed image (NaN with ``details["error"]``)."""

    weight_sets: tuple[str, ...] = (DETECTOR_SET, SPACY_SET)
    requires = ("spacy",)
    raw_range = (0.0, 1.0)

    @classmethod
    def install_hint(cls) -> str:
        return 'pip install "flowopd[t2i]"  (spaCy, the official parser)'

    def load(self) -> None:
        from flowopd.reward_models.t2i_blip_vqa import load_spacy_wheel

        self.nlp = load_spacy_wheel(self.weight_path(SPACY_SET))
        self.detector = OwlDetector(self.weight_path(DETECTOR_SET), self.device)

    def _score(self, images, prompts: list[str], metadata) -> tuple[list[float | None], list[dict[str, Any]]]:
        extra = self._prepare(images, prompts)
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            try:
                raw, detail = self._score_one(np.asarray(image), prompt, extra[i] if extra else None)
            except ParseError as exc:
                raw, detail = None, {"error": str(exc)}
            raws.append(raw)
            details.append(detail)
        return raws, details

    def _prepare(self, images, prompts: list[str]) -> list[Any] | None:
        """Per-image inputs computed for the whole batch at once (3D: the depth maps; complex: BLIP and CLIP)."""
        return None

    def _score_one(self, image: np.ndarray, prompt: str, extra: Any) -> tuple[float, dict[str, Any]]:
        """One image's score and details; every category's reward (spatial, 3d_spatial, numeracy, complex) defines it."""
        raise NotImplementedError(f"{type(self).__name__} must implement _score_one")


def _detections(dets: Sequence[Det], limit: int = 10) -> list[dict[str, Any]]:
    return [{"label": d.label, "score": round(d.score, 4), "box": [round(v, 1) for v in d.box]} for d in dets[:limit]]


class T2ISpatialOWLv2(_T2IDetectionReward):
    """T2I-CompBench++ spatial (2D): 0.25 conf1 + 0.25 conf2 + 0.5 position, below 0.5 -> 0 (2D_spatial_eval.py)."""

    name = "t2i_spatial@owlv2"
    version = "1-owlv2-b16"
    description = "T2I-CompBench++ 2D spatial, the official formula with OWLv2 instead of UniDet (named apart)"

    def _score_one(self, image, prompt, extra):
        obj1, obj2 = simple_objects(spacy_tokens(self.nlp, prompt))
        relation = relation_in(prompt, RELATIONS_2D)
        dets = self.detector.detect(image, list(dict.fromkeys([obj1, obj2])))
        score, info = spatial_2d_score(obj1, obj2, relation, dets)
        return score, {"objects": [obj1, obj2], "relation": relation, **info, "detections": _detections(dets)}


class T2I3DSpatialOWLv2DPT(_T2IDetectionReward):
    """T2I-CompBench++ 3d_spatial: the 2D score's terms with depth-based positions, no cut (3D_spatial_eval.py)."""

    name = "t2i_3d_spatial@owlv2-dpt"
    version = "1-owlv2-b16-dpt-hybrid"
    description = "T2I-CompBench++ 3D spatial, the official formula with OWLv2 instead of UniDet + DPT-Hybrid depth (named apart)"
    weight_sets = (DETECTOR_SET, DEPTH_SET, SPACY_SET)

    def load(self) -> None:
        super().load()
        self.depth = DepthModel(self.weight_path(DEPTH_SET), self.device)

    def _prepare(self, images, prompts: list[str]) -> list[Any] | None:
        return self.depth.depth_maps([np.asarray(im) for im in images])

    def _score_one(self, image, prompt, extra):
        obj1, obj2 = simple_objects(spacy_tokens(self.nlp, prompt))
        relation = relation_in(prompt, RELATIONS_3D)
        dets = self.detector.detect(image, list(dict.fromkeys([obj1, obj2])))
        score, info = spatial_3d_score(obj1, obj2, relation, dets, extra)
        return score, {"objects": [obj1, obj2], "relation": relation, **info, "detections": _detections(dets)}


class T2INumeracyOWLv2(_T2IDetectionReward):
    """T2I-CompBench++ numeracy: per counted object 0.5/N if detected + 0.5/N if exactly counted (numeracy_eval.py)."""

    name = "t2i_numeracy@owlv2"
    version = "1-owlv2-b16"
    description = "T2I-CompBench++ numeracy, the official formula with OWLv2 instead of UniDet (named apart)"
    weight_sets = (DETECTOR_SET, SPACY_SET, LISTS_SET)

    def load(self) -> None:
        super().load()
        (self.singular, self.plural), _, _ = read_lists(self.weight_path(LISTS_SET))

    def _score_one(self, image, prompt, extra):
        objects, counts = parse_counts([t.text for t in spacy_tokens(self.nlp, prompt)], self.singular, self.plural)
        queries = list(dict.fromkeys(NUMERACY_ALIASES.get(o, o) for o in objects))
        dets = merge_duplicates(self.detector.detect(image, queries))
        score, info = numeracy_score(objects, counts, [d.label for d in dets])
        return score, {**info, "detections": _detections(dets)}


class T2IComplexOWLv2(_T2IDetectionReward):
    """T2I-CompBench++ complex, the 3-in-1 score (3_in_1.py L44-69) of one image from its three parts:

    attribute = ``t2i_blip_vqa`` on the sentence (BLIP_vqa.py, no flag); spatial = the 2D score with ``--complex`` parsing
    (2D_spatial_eval.py L176-220), OWLv2 for UniDet; action = the raw CLIP ViT-B/32 cosine with the adjectives removed
    (CLIP_similarity.py L61-64, L71-80). The prompt's group (spatial, action, or both) is its membership in the official
    ``complex_val_spatial.txt`` / ``complex_val_action.txt`` (a weight set: the upstream files at the pinned commit).
    """

    name = "t2i_complex@owlv2"
    version = "1-owlv2-b16"
    description = "T2I-CompBench++ complex 3-in-1 (BLIP-VQA, 2D spatial, CLIP), OWLv2 instead of UniDet (named apart)"
    weight_sets = (DETECTOR_SET, SPACY_SET, "blip-vqa-capfilt-large", "clip-vit-base-patch32", LISTS_SET)
    raw_range = (-0.5, 1.0)  # the action part is a cosine: (cosine + attribute) / 2 >= -0.5

    def load(self) -> None:
        from flowopd.reward_models.clip_rewards import CLIPScoreViTB32
        from flowopd.reward_models.t2i_blip_vqa import BlipVQA

        super().load()
        _, self.spatial_keys, self.action_keys = read_lists(self.weight_path(LISTS_SET))
        parts = []
        for cls in (BlipVQA, CLIPScoreViTB32):
            mine = {k: v for k, v in self.weights.items() if k in cls.weight_sets}
            parts.append(cls(device=self.device, batch_size=self.batch_size, weights=mine))
        self.attribute, self.clip = parts

    def _prepare(self, images, prompts: list[str]) -> list[Any] | None:
        attribute = self.attribute.score(images, prompts)
        texts = [" ".join(t.text for t in self.nlp(p) if t.pos_ != "ADJ") for p in prompts]  # CLIP_similarity.py L61-64
        clip = self.clip.score(images, texts)
        return [
            (float(a), d["questions"], float(c["cosine"]), text)
            for a, d, c, text in zip(attribute.raw.tolist(), attribute.details, clip.details, texts)
        ]

    def _score_one(self, image, prompt, extra):
        attribute, questions, action, text = extra
        obj1, obj2 = complex_objects(spacy_tokens(self.nlp, prompt))
        relation = relation_in(prompt, RELATIONS_2D)
        dets = self.detector.detect(image, [o for o in dict.fromkeys([obj1, obj2]) if o is not None])
        spatial, info = spatial_2d_score(obj1, obj2, relation, dets)
        group = complex_group(prompt, self.spatial_keys, self.action_keys)
        parts = {"attribute": attribute, "spatial": spatial, "action": action}
        detail = {"group": group, **parts, "questions": questions, "action_text": text, "objects": [obj1, obj2], "relation": relation}
        return three_in_one(group, attribute, spatial, action), {**detail, "position": info["position"], "detections": _detections(dets)}
