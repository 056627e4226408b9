"""T2I-CompBench++ attribute binding (color, shape, texture; and the attribute part of complex): BLIP-VQA.

Computed as the official scorer does (Karine-Huang/T2I-CompBench @1b70949):

- ``BLIPvqa_eval/BLIP_vqa.py`` L16-54, L98-124: the prompt's noun phrases (spaCy ``en_core_web_sm``
  ``noun_chunks``, dropping the chunks ``top``, ``the side``, ``the left``, ``the right``), at most 8; one question
  ``"<phrase>?"`` each; the image's score is the product of the answers' P(yes), each written with 4 decimals and the
  product rounded to 4 decimals again; a prompt without a phrase scores 1.
- ``BLIPvqa_eval/data/utils.py`` ``pre_question``: lower-case, drop ``. ! " ( ) * # : ; ~``, strip trailing blanks,
  at most 50 words.
- ``BLIPvqa_eval/data/__init__.py`` L13-27: the image squashed to 480 x 480 (bicubic, aspect ratio not kept),
  CLIP mean and std.
- ``BLIPvqa_eval/models/blip_vqa.py`` L44-46, L120-147: the question tokenised (``max_length=35``; upstream pads
  to the longest and masks, we group equal lengths) with its first token replaced by ``[ENC]``; the image-grounded question encoder; one decoder step
  from ``[DEC]`` cross-attending to the question; softmax over the whole vocabulary at that step;
  ``P(yes) = p[yes] / (p[yes] + p[no])``.

The model is BLIP ViT-B VQA capfilt-large through transformers' ``BlipForQuestionAnswering``
(``Salesforce/blip-vqa-capfilt-large``, converted by transformers from the same checkpoint). That conversion stored the
position embeddings at 384 px; the 480-px input interpolates them back (``interpolate_pos_encoding``), so expect small
differences from the original runtime: *same model, other runtime*.

Two rewards: ``t2i_blip_vqa`` parses with spaCy's ``en_core_web_sm`` (the official parser, a downloadable weight set:
the wheel spaCy publishes on the hub), and ``t2i_blip_vqa@np-rules`` with :func:`rule_noun_phrases`, a dependency-free
approximation named apart because its phrases, hence its scores, can differ on sentence-like prompts.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowopd.errors import FlowOPDError
from flowopd.reward_models.base import RewardModel

SKIPPED_PHRASES = ("top", "the side", "the left", "the right")  # BLIP_vqa.py L35-37
MAX_PHRASES = 8  # --np_num
IMAGE_SIZE = 480  # configs/vqa.yaml image_size
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_QUESTION_TOKENS = 35


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's ``pre_question``: lower-case, drop ``. ! " ( ) * # : ; ~``, strip trailing blanks, keep 50 words."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def phrase_questions(phrases: Sequence[str]) -> list[str]:
    """The questions of a prompt's noun phrases: the official filter, the first 8, ``"<phrase>?"`` each, pre-processed."""
    kept = [p for p in phrases if p not in SKIPPED_PHRASES][:MAX_PHRASES]
    return [pre_question(f"{p}?") for p in kept]


def image_score(p_yes: Sequence[float]) -> float:
    """The product of the answers, each at 4 decimals as the official script writes and rereads them, rounded to 4."""
    return round(math.prod(float(f"{p:.4f}") for p in p_yes), 4)


# ----------------------------------------------------------------------------- noun phrases

_DETERMINERS = {"a", "an", "the", "one", "two", "three", "four", "five", "some", "his", "her", "its", "their", "my", "our", "your"}
_BREAKS = {"and", "or", "but", "with", "on", "in", "of", "at", "to", "by", "near", "next", "beside", "behind", "under", "over",
           "above", "below", "into", "onto", "from", "against", "while", "as", "is", "are", "was", "were", "be", "has", "have",
           "which", "that", "who", "where"}  # fmt: skip
_STARTS_AFTER = {"", ",", "and", "or", "of", "with", "on", "in", "at", "by", "from", "against", "under", "over", "behind", "beside"}


def rule_noun_phrases(prompt: str) -> list[str]:
    """A dependency-free noun-phrase splitter for ``t2i_blip_vqa@np-rules`` (not the official spaCy parser).

    A phrase starts at a determiner (``a``, ``the``, a number word, a possessive), or at the first word of the prompt
    or after a comma, conjunction or preposition, and runs to the next conjunction, preposition, copula, relative
    pronoun, determiner or punctuation mark. On the attribute prompts ("a green bench and a blue bowl", "a red apple and yellow bananas") it gives spaCy's chunks; on
    sentences with verbs it can differ ("two hot dogs sit on ..." gives "two hot dogs sit": spaCy's part-of-speech tags
    are what tell a verb from a noun).
    """
    phrases: list[list[str]] = []
    current: list[str] | None = None
    previous = ""
    for raw in re.findall(r"[\w'-]+|[^\w\s]", prompt):
        word = raw.lower()
        if not re.match(r"[\w'-]", raw) or word in _BREAKS:
            current = None
        elif word in _DETERMINERS or (current is None and previous in _STARTS_AFTER):
            current = [raw]
            phrases.append(current)
        elif current is not None:
            current.append(raw)
        previous = word
    return [" ".join(words) for words in phrases]


def load_spacy_wheel(folder: Path) -> Callable[[str], Any]:
    """spaCy's pipeline from the ``en_core_web_sm`` wheel in ``folder`` (unpacked once beside it), loaded by ``spacy.load``."""
    import spacy

    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise FlowOPDError(f"no spaCy wheel in {folder}; run `flowopd weights download t2i_blip_vqa`")
    unpacked = folder / "unpacked"
    if not unpacked.is_dir():
        from flowopd.runinfo import atomic_dir

        with atomic_dir(unpacked) as tmp, zipfile.ZipFile(wheels[-1]) as wheel:
            wheel.extractall(tmp)
    configs = sorted(unpacked.glob("*/*/config.cfg"))  # en_core_web_sm/en_core_web_sm-3.x.y/config.cfg
    if not configs:
        raise FlowOPDError(f"{wheels[-1].name} holds no spaCy pipeline (no <package>/<package>-<version>/config.cfg)")
    return spacy.load(configs[0].parent)


def spacy_noun_phrases(nlp: Callable[[str], Any], prompt: str) -> list[str]:
    """The official phrases: ``[chunk.text for chunk in nlp(prompt).noun_chunks]`` (BLIP_vqa.py L33-34)."""
    return [chunk.text for chunk in nlp(prompt).noun_chunks]


# ----------------------------------------------------------------------------- BLIP


def blip_pixels(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H,W,3]`` images -> ``[B,3,480,480]``: PIL bicubic squash, [0, 1], CLIP mean and std (data/__init__.py)."""
    from PIL import Image

    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    out = []
    for im in images:
        resized = Image.fromarray(np.asarray(im)).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((x - mean) / std)
    return torch.stack(out)


@torch.no_grad()
def yes_probabilities(model, tokenizer, pixel_values: torch.Tensor, owners: Sequence[int], questions: Sequence[str]) -> list[float]:
    """P(yes) / (P(yes) + P(no)) of each question about image ``owners[i]``, from the first answer token (blip_vqa.py).

    Questions run in groups of equal token length, so nothing is padded: upstream pads to the longest question and
    masks the padding, which leaves the answers unchanged. transformers (5.23, ``modeling_blip_text.py``) drops the
    decoder's cross-attention mask: ``BlipTextAttention`` hands it on as ``attention_mask``, and the attention module
    reads ``encoder_attention_mask`` for cross-attention, so padded question positions would move the answers.
    """
    device = next(model.parameters()).device
    image_embeds = model.vision_model(pixel_values=pixel_values.to(device), interpolate_pos_encoding=True).last_hidden_state
    ids = [tokenizer(q, truncation=True, max_length=MAX_QUESTION_TOKENS)["input_ids"] for q in questions]
    dec_id = model.config.text_config.bos_token_id  # [DEC], 30522
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    out = [0.0] * len(questions)
    for length in sorted({len(x) for x in ids}):
        members = [i for i, x in enumerate(ids) if len(x) == length]
        input_ids = torch.tensor([ids[i] for i in members], device=device)
        input_ids[:, 0] = dec_id + 1  # [ENC], 30523: the token BLIP adds after [DEC], in place of [CLS]
        images = image_embeds[torch.tensor([owners[i] for i in members], device=device)]
        question = model.text_encoder(input_ids=input_ids, encoder_hidden_states=images).last_hidden_state
        start = torch.full((len(members), 1), dec_id, dtype=torch.long, device=device)
        probs = model.text_decoder(input_ids=start, encoder_hidden_states=question).logits[:, 0, :].float().softmax(dim=-1)
        for i, p in zip(members, (probs[:, yes] / (probs[:, yes] + probs[:, no])).tolist()):
            out[i] = p
    return out


class BlipVQA(RewardModel):
    """T2I-CompBench++'s BLIP-VQA attribute-binding score (0-1): the product of P(yes) over the prompt's noun phrases."""

    name = "t2i_blip_vqa"
    version = "1"
    description = "T2I-CompBench++ BLIP-VQA (color, shape, texture): product of P(yes) over spaCy noun phrases"
    weight_sets = ("blip-vqa-capfilt-large", "spacy-en-core-web-sm")
    requires = ("spacy",)
    raw_range = (0.0, 1.0)

    @classmethod
    def install_hint(cls) -> str:
        return 'pip install "flowopd[t2i]"  (spaCy, the official phrase parser)'

    def load(self) -> None:
        from transformers import AutoTokenizer, BlipForQuestionAnswering

        folder = self.weight_path("blip-vqa-capfilt-large")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = BlipForQuestionAnswering.from_pretrained(str(folder)).float().to(self.device).eval()
        vocab = self.model.config.text_config.vocab_size
        if self.model.config.text_config.bos_token_id + 1 >= vocab:
            raise FlowOPDError(f"{folder}: the text vocabulary ({vocab}) has no [ENC] row after [DEC]; not a BLIP VQA checkpoint")
        self.parse = self._parser()

    def _parser(self) -> Callable[[str], list[str]]:
        nlp = load_spacy_wheel(self.weight_path("spacy-en-core-web-sm"))
        return lambda prompt: spacy_noun_phrases(nlp, prompt)

    def _score(self, images, prompts: list[str], metadata) -> tuple[list[float], list[dict[str, Any]]]:
        per_image = [phrase_questions(self.parse(p)) for p in prompts]
        owners = [i for i, qs in enumerate(per_image) for _ in qs]
        flat = [q for qs in per_image for q in qs]
        p_yes = yes_probabilities(self.model, self.tokenizer, blip_pixels(list(images)), owners, flat)
        raws, details, at = [], [], 0
        for qs in per_image:
            mine = p_yes[at : at + len(qs)]
            at += len(qs)
            raws.append(image_score(mine))
            details.append({"questions": qs, "p_yes": [round(p, 4) for p in mine]})
        return raws, details


class BlipVQARules(BlipVQA):
    """``t2i_blip_vqa`` with :func:`rule_noun_phrases` instead of spaCy: no extra package, named apart."""

    name = "t2i_blip_vqa@np-rules"
    description = "T2I-CompBench++ BLIP-VQA with a rule-based phrase splitter (not the official spaCy parser)"
    weight_sets = ("blip-vqa-capfilt-large",)
    requires = ()

    def _parser(self) -> Callable[[str], list[str]]:
        return rule_noun_phrases
