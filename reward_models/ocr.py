"""The OCR reward (SPEC section 7) on two engines: RapidOCR's bundled ONNX models, and PaddleOCR as in Flow-GRPO.

Both follow Flow-GRPO's scorer (``flow_grpo/ocr.py``, yifan123/flow_grpo):

- the engine reads the image once, line by line (detection + recognition, no
  angle classifier: ``PaddleOCR(use_angle_cls=False, lang="en")`` and
  ``ocr(img, cls=False)``);
- a line counts when its recognition confidence is at least
  :data:`CONFIDENCE_THRESHOLD` = 0.5. That is PaddleOCR 2.x's ``drop_score``
  default, applied inside ``TextSystem.__call__`` (``score >= drop_score``)
  before Flow-GRPO's own ``res[1][1] > 0`` test, so 0.5 is the threshold
  Flow-GRPO's numbers were produced with; we ask each engine for every line
  and apply it ourselves, so ``details["lines"]`` shows the dropped ones too;
- the kept lines are joined with ``""`` in reading order, and
  :func:`flowopd.reward_models.ocr_formula.ocr_reward` gives
  ``1 - dist / len(target)``.

One difference from Flow-GRPO on purpose: where the engine raises, Flow-GRPO
scores 0; here the image is *failed* (NaN with ``details["error"]``), as for
every reward (see :class:`flowopd.reward_models.base.Scores`).

OCR engines work one image at a time, so both rewards loop over the batch
with one engine kept loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel
from flowopd.reward_models.ocr_formula import ocr_reward, target_text
from flowopd.reward_models.weights import WeightSet, register_weight_set

CONFIDENCE_THRESHOLD = 0.5  # PaddleOCR 2.x's default drop_score, which Flow-GRPO's scorer runs under

Line = tuple[str, float]  # (recognised text, recognition confidence), in the engine's reading order

# PaddleOCR 2.9 with lang="en" (Flow-GRPO pins paddleocr==2.9.1) loads three inference models:
# det en_PP-OCRv3_det_infer, rec en_PP-OCRv4_rec_infer, cls ch_ppocr_mobile_v2.0_cls_infer. It checks for all
# three folders (and downloads any missing) even with use_angle_cls=False, so the set has all three.
PADDLE_WEIGHTS = register_weight_set(
    WeightSet(
        "paddleocr-models",
        "https://paddleocr.bj.bcebos.com",
        tuple(f"{d}/inference.{ext}" for d in ("det", "rec", "cls") for ext in ("pdmodel", "pdiparams")),
        "PaddleOCR 2.x English inference models (det PP-OCRv3, rec PP-OCRv4, cls mobile v2.0), one folder each; "
        "`flowopd weights download ocr@paddle` fetches the three .tar files and extracts them",
        license="Apache-2.0",
        archives=(
            ("det", "PP-OCRv3/english/en_PP-OCRv3_det_infer.tar"),
            ("rec", "PP-OCRv4/english/en_PP-OCRv4_rec_infer.tar"),
            ("cls", "dygraph_v2.0/ch/ch_ppocr_mobile_v2.0_cls_infer.tar"),
        ),
    )
)


def join_confident(lines: list[Line], threshold: float = CONFIDENCE_THRESHOLD) -> str:
    """Flow-GRPO's recognised text: the lines with confidence >= ``threshold`` (and > 0), joined with ``""``."""
    return "".join(text for text, conf in lines if conf >= threshold and conf > 0)


class _OCRReward(RewardModel):
    """The shared part: target text, the formula, per-image details; subclasses supply :meth:`_read`."""

    raw_range = (0.0, 1.0)
    higher_is_better = True

    def applies_to(self, prompt: str, metadata: dict[str, Any] | None) -> bool:
        return bool((metadata or {}).get("text") or prompt.count('"') >= 2)

    def _read(self, image: np.ndarray) -> list[Line]:
        """The engine's lines for one uint8 ``[H, W, 3]`` RGB image, in reading order, confidences included."""
        raise NotImplementedError

    def _score(self, images, prompts, metadata):
        raws: list[float | None] = []
        details: list[dict[str, Any]] = []
        for img, prompt, meta in zip(images, prompts, metadata):
            target = (meta or {}).get("text") or target_text(prompt)
            try:
                lines = self._read(np.ascontiguousarray(img))
            except Exception as exc:  # an engine failure is a failed image, never a 0
                raws.append(None)
                details.append({"target": target, "error": f"{type(exc).__name__}: {exc}"})
                continue
            recognised = join_confident(lines)
            reward, dist = ocr_reward(target, recognised)
            raws.append(reward)
            details.append(
                {
                    "target": target,
                    "recognised": recognised,
                    "dist": dist,
                    "lines": [
                        {"text": t, "confidence": round(float(c), 4), "kept": bool(c >= CONFIDENCE_THRESHOLD and c > 0)} for t, c in lines
                    ],
                }
            )
        return raws, details


class RapidOCRReward(_OCRReward):
    """OCR reward read by RapidOCR 3.x with the PP-OCRv6 (small) det + rec ONNX models bundled in its wheel.

    Nothing is downloaded: the model files are passed to RapidOCR by path
    (``Det.model_path`` / ``Rec.model_path``), so its resolver never runs;
    the angle classifier is off, as in Flow-GRPO. The engine's own
    ``Global.text_score`` filter is set to 0 so every line comes back and
    :func:`join_confident` applies the 0.5 threshold. Images go in as BGR,
    the channel order RapidOCR assumes for arrays.

    This is not PaddleOCR 2.x's PP-OCRv4 English pipeline that Flow-GRPO
    used (that is ``ocr@paddle``), so the version names the engine and its
    models; numbers from the two are different metrics.
    """

    name = "ocr"
    version = "1-rapidocr3-ppocrv6"
    description = "OCR: RapidOCR 3 with bundled PP-OCRv6 ONNX models; 1 - edit_distance/len of the quoted text (Flow-GRPO formula)"
    requires = ("rapidocr", "onnxruntime")
    MODEL_FILES = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx"}

    @classmethod
    def install_hint(cls) -> str:
        return "pip install rapidocr onnxruntime"

    @classmethod
    def bundled_models(cls) -> dict[str, Path]:
        """The PP-OCRv6 det/rec ONNX files inside the installed rapidocr package."""
        spec = importlib.util.find_spec("rapidocr")
        if spec is None or spec.origin is None:
            raise FlowOPDError(f"ocr needs the Python module 'rapidocr': {cls.install_hint()}")
        root = Path(spec.origin).parent / "models"
        return {task: root / fname for task, fname in cls.MODEL_FILES.items()}

    def load(self) -> None:
        try:
            import onnxruntime
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise FlowOPDError(f"ocr needs rapidocr and onnxruntime ({exc.name} is missing): {self.install_hint()}") from None
        models = self.bundled_models()
        for path in models.values():
            if not path.is_file():
                raise FlowOPDError(
                    f"ocr ({self.version}): rapidocr's bundled model {path.name} is not in {path.parent}; "
                    "install a rapidocr 3 wheel that bundles PP-OCRv6 (pip install 'rapidocr>=3.10')"
                )
        use_cuda = self.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        self._engine = RapidOCR(
            params={
                "Global.use_cls": False,
                "Global.text_score": 0.0,
                "Global.log_level": "error",
                "Det.model_path": str(models["Det"]),
                "Rec.model_path": str(models["Rec"]),
                "EngineConfig.onnxruntime.use_cuda": use_cuda,
            }
        )

    def _read(self, image: np.ndarray) -> list[Line]:
        out = self._engine(np.ascontiguousarray(image[:, :, ::-1]))  # RGB -> BGR
        txts = getattr(out, "txts", None)
        if not txts:  # nothing detected: RapidOCR returns an empty output
            return []
        return [(str(t), float(s)) for t, s in zip(txts, out.scores)]


class PaddleOCRReward(_OCRReward):
    """OCR reward read by PaddleOCR 2.x exactly as Flow-GRPO's ``OcrScorer`` calls it.

    ``PaddleOCR(use_angle_cls=False, lang="en", show_log=False)`` and
    ``ocr(img, cls=False)`` on the RGB array (Flow-GRPO passes
    ``np.array(pil_image)`` to an engine that treats arrays as BGR; the
    channel order is kept as Flow-GRPO had it). The three model folders are
    read from the ``paddleocr-models`` weight set, never downloaded at load;
    ``drop_score=0`` returns every line so :func:`join_confident` applies the
    0.5 threshold that PaddleOCR's default would have applied.

    Flow-GRPO pins ``paddleocr==2.9.1`` (``PaddleOCR(..., use_gpu=...)``, the
    2.x API); PaddleOCR 3 has another API and other default models, so it
    is refused rather than silently giving a different metric.
    """

    name = "ocr@paddle"
    version = "1-paddleocr2-ppocrv4-en"
    description = "OCR as in Flow-GRPO: PaddleOCR 2.x (en PP-OCRv4 rec, PP-OCRv3 det), no angle classifier; 1 - edit_distance/len"
    requires = ("paddleocr",)
    weight_sets = ("paddleocr-models",)

    @classmethod
    def install_hint(cls) -> str:
        return "pip install 'flowopd[paddle]'"

    def load(self) -> None:
        root = self.weight_path("paddleocr-models")  # one-line WeightsMissingError when the folders are not there
        try:
            import paddleocr
        except ImportError:
            raise FlowOPDError(f"ocr@paddle needs the Python module 'paddleocr': {self.install_hint()}") from None
        major = str(getattr(paddleocr, "__version__", "2")).split(".")[0]
        if major.isdigit() and int(major) >= 3:
            raise FlowOPDError(
                f"ocr@paddle reproduces Flow-GRPO's PaddleOCR 2.x pipeline but paddleocr {paddleocr.__version__} is installed; "
                "pip install 'paddleocr>=2.9,<3'"
            )
        self._engine = paddleocr.PaddleOCR(
            use_angle_cls=False,
            lang="en",
            use_gpu=self.device.type == "cuda",
            show_log=False,
            drop_score=0.0,
            det_model_dir=str(root / "det"),
            rec_model_dir=str(root / "rec"),
            cls_model_dir=str(root / "cls"),
        )

    def _read(self, image: np.ndarray) -> list[Line]:
        result = self._engine.ocr(image, cls=False)
        if not result or not result[0]:  # PaddleOCR 2.x gives [None] when nothing is detected
            return []
        return [(str(res[1][0]), float(res[1][1])) for res in result[0]]
