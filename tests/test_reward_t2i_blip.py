"""T2I-CompBench++ BLIP-VQA (reward_models/t2i_blip_vqa.py): the official formulas on crafted values, P(yes) against a
hand-built forward of a tiny random BLIP saved with ``save_pretrained``, and the official spaCy path through a wheel."""

import inspect
import math
import re
import zipfile

import numpy as np
import pytest
import torch

from flowopd.reward_models import load_reward
from flowopd.reward_models.t2i_blip_vqa import image_score, phrase_questions, pre_question, rule_noun_phrases

WORDS = ["a", "an", "the", "green", "blue", "red", "bench", "bowl", "apple", "and", "round", "pizza", "of", "piece", "top"]
BREAK_WORDS = {"of", "with", "on", "in", "near", "next", "is", "are", "which", "and"}
PROMPTS = ["a green bench and a blue bowl", "a red apple", "a round pizza and a piece of bench"]


def test_questions_follow_the_official_preprocessing():
    assert pre_question('A "Green" Bench (big); ~ok.?  ') == "a green bench big ok?"
    assert pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
    chunks = ["The Green bench", "top", "the left", "a bowl", *[f"x{i}" for i in range(10)]]
    assert phrase_questions(chunks) == ["the green bench?", "a bowl?", *[f"x{i}?" for i in range(6)]]  # 8 kept


def test_the_image_score_is_the_rounded_product_and_one_without_phrases():
    assert image_score([0.12346, 0.8]) == round(0.1235 * 0.8, 4) == 0.0988  # each answer at 4 decimals, then the product
    assert image_score([0.99996, 0.99996]) == 1.0
    assert image_score([]) == 1.0  # BLIP_vqa.py: an empty question counts 1


@pytest.mark.parametrize(
    ("prompt", "phrases"),
    [
        ("a green bench and a blue bowl", ["a green bench", "a blue bowl"]),
        ("a round pizza and a rectangular piece of lasagna", ["a round pizza", "a rectangular piece", "lasagna"]),
        ("The brown dog was lying on the green mat.", ["The brown dog", "the green mat"]),
        ("a red apple and yellow bananas", ["a red apple", "yellow bananas"]),
        ("a white snow and a blue sled", ["a white snow", "a blue sled"]),
        ("A bathroom with white tile and a beige toilet.", ["A bathroom", "white tile", "a beige toilet"]),
    ],
)
def test_the_rule_parser_finds_the_noun_phrases_spacy_finds(prompt, phrases):
    assert rule_noun_phrases(prompt) == phrases


def test_the_rule_parser_splits_every_real_two_object_attribute_prompt_in_its_halves(shared_data):
    """The attribute prompts "<attr> <noun> and <attr> <noun>" (60-80% of color, shape and texture): the two halves."""
    for category in ("color", "shape", "texture"):
        lines = [x.strip() for x in (shared_data / "t2i-compbench" / f"{category}_val.txt").read_text().splitlines() if x.strip()]
        simple = [p for p in lines if re.fullmatch(r"[\w -]+ and [\w -]+", p) and not set(p.replace(" and ", " ").split()) & BREAK_WORDS]
        assert len(simple) >= 0.6 * len(lines), category
        for p in simple:
            assert rule_noun_phrases(p) == p.split(" and "), p


# ----------------------------------------------------------------------------- a tiny BLIP


def _tiny_blip(folder):
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "?", *WORDS]
    size = len(vocab) + 2  # + [DEC], [ENC], as BLIP adds them
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(transformers.BertTokenizer.__init__).parameters:  # transformers 5
        tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    else:
        tokenizer = transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    tokenizer.save_pretrained(str(folder))
    text = dict(vocab_size=size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                bos_token_id=size - 2, pad_token_id=0, sep_token_id=3, encoder_hidden_size=32, max_position_embeddings=64)  # fmt: skip
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=384, patch_size=96)
    torch.manual_seed(0)
    config = transformers.BlipConfig(text_config=text, vision_config=vision)
    model = transformers.BlipForQuestionAnswering(config)
    with torch.no_grad():  # the default init (std 0.02) makes every answer 50:50; spread the weights so answers differ
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return _tiny_blip(tmp_path_factory.mktemp("blip") / "blip-vqa")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)


def _hand_p_yes(folder, image: np.ndarray, question: str) -> float:
    """One question alone, no batching: tokens by hand ([ENC] first), 480 x 480 bicubic squash, one decoder step."""
    import transformers
    from PIL import Image

    model = transformers.BlipForQuestionAnswering.from_pretrained(str(folder)).eval()
    tok = transformers.BertTokenizer.from_pretrained(str(folder))
    ids = tok.encode(question)
    dec = model.config.text_config.bos_token_id
    ids = torch.tensor([[dec + 1, *ids[1:]]])
    x = np.asarray(Image.fromarray(image).resize((480, 480), Image.BICUBIC), dtype=np.float32) / 255.0
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = torch.from_numpy(((x - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        img = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)[0]
        q = model.text_encoder(input_ids=ids, encoder_hidden_states=img)[0]
        logits = model.text_decoder(input_ids=torch.tensor([[dec, 0]]), encoder_hidden_states=q, return_logits=True)[0, 0]
    p = logits.softmax(-1)
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    return float(p[yes] / (p[yes] + p[no]))


def test_the_score_is_the_product_of_p_yes_over_phrases_computed_by_hand(blip, images):
    reward = load_reward("t2i_blip_vqa@np-rules", weights={"blip-vqa-capfilt-large": blip}, batch_size=2)
    scores = reward.score(images, PROMPTS)
    for image, prompt, raw, details in zip(images, PROMPTS, scores.raw.tolist(), scores.details):
        questions = phrase_questions(rule_noun_phrases(prompt))
        assert details["questions"] == questions
        hand = [_hand_p_yes(blip, image, q) for q in questions]
        assert details["p_yes"] == pytest.approx([round(p, 4) for p in hand], abs=2e-4)
        assert raw == pytest.approx(image_score(hand), abs=5e-4) and 0 < raw < 1
    assert scores.details[2]["questions"] == ["a round pizza?", "a piece?", "bench?"]
    alone = reward.score(images[2:], PROMPTS[2:])  # padding with longer questions in the batch changes nothing
    assert alone.raw.tolist() == pytest.approx(scores.raw[2:].tolist(), abs=1e-4)


def test_a_prompt_without_phrases_scores_one(blip, images):
    reward = load_reward("t2i_blip_vqa@np-rules", weights={"blip-vqa-capfilt-large": blip})
    assert reward.score(images[:1], ["top"]).raw.tolist() == [1.0]  # its one phrase is one the official filter drops


# ----------------------------------------------------------------------------- the official parser, through its wheel


def _spacy_wheel(folder):
    """A spaCy pipeline whose one component sets a gold parse, packaged as the en_core_web_sm wheel is laid out."""
    import spacy

    pipeline = folder / "pipeline"
    folder.mkdir()
    nlp = spacy.blank("en")
    nlp.add_pipe("flowopd_test_gold_parse")
    nlp.to_disk(pipeline)
    with zipfile.ZipFile(folder / "en_core_web_sm-any-py3-none-any.whl", "w") as wheel:
        for f in pipeline.rglob("*"):
            if f.is_file():
                wheel.write(f, f"en_core_web_sm/en_core_web_sm-3.8.0/{f.relative_to(pipeline)}")
        wheel.writestr("en_core_web_sm/__init__.py", "")
    return folder


GOLD = {  # heads, deps, pos: what en_core_web_sm parses
    "the green bench on top of a blue bowl": (
        [2, 2, 2, 2, 3, 4, 8, 8, 5],
        ["det", "amod", "ROOT", "prep", "pobj", "prep", "det", "amod", "pobj"],
        ["DET", "ADJ", "NOUN", "ADP", "NOUN", "ADP", "DET", "ADJ", "NOUN"],
    ),
}


def test_the_official_reward_asks_about_spacys_noun_chunks(blip, images, tmp_path):
    import spacy  # a dev dependency (and the t2i extra)
    from spacy.language import Language
    from spacy.tokens import Doc

    if "flowopd_test_gold_parse" not in Language.factories:

        @Language.component("flowopd_test_gold_parse")
        def gold_parse(doc):
            heads, deps, pos = GOLD[doc.text]
            return Doc(doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc], heads=heads, deps=deps, pos=pos)

    wheel = _spacy_wheel(tmp_path / "spacy")
    reward = load_reward("t2i_blip_vqa", weights={"blip-vqa-capfilt-large": blip, "spacy-en-core-web-sm": wheel})
    prompt = "the green bench on top of a blue bowl"
    scores = reward.score(images[:1], [prompt])
    assert [c.text for c in spacy.load(next((wheel / "unpacked").glob("*/*/config.cfg")).parent)(prompt).noun_chunks] == [
        "the green bench",
        "top",
        "a blue bowl",
    ]
    assert scores.details[0]["questions"] == ["the green bench?", "a blue bowl?"]  # "top" is dropped, as upstream
    assert not math.isnan(scores.raw[0])
