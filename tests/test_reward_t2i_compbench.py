"""T2I-CompBench++ spatial, 3d_spatial, numeracy and complex (reward_models/t2i_compbench*.py): the official formulas on
crafted detections and depth maps, each checked against a value computed by hand from the upstream rule; then the four
rewards end to end through their real loaders on tiny random OWLv2 / DPT / BLIP / CLIP weights saved with
``save_pretrained`` and a spaCy pipeline packaged as the en_core_web_sm wheel (no hub access)."""

import math
import zipfile

import numpy as np
import pytest
import torch

from flowopd.reward_models import get_reward_class, load_reward
from flowopd.reward_models.t2i_compbench import class_wise_nms, to_detector_frame
from flowopd.reward_models.t2i_compbench_rules import (
    RELATIONS_2D,
    Det,
    ParseError,
    Token,
    complex_group,
    complex_objects,
    detector_frame,
    merge_duplicates,
    numeracy_score,
    parse_counts,
    position_2d,
    position_3d,
    relation_in,
    simple_objects,
    spatial_2d_score,
    spatial_3d_score,
    three_in_one,
)


def _tokens(spec: str) -> list[Token]:
    """ "word/POS word/POS ..." -> tokens (a trailing "." token has no space before it)."""
    out = [Token(*w.rsplit("/", 1)) for w in spec.split()]
    return [t._replace(space=not (i + 1 < len(out) and out[i + 1].text == ".")) for i, t in enumerate(out)]


# ----------------------------------------------------------------------------- formulas


def test_the_detector_frame_is_unidets_resize():
    assert detector_frame(512, 512) == (479, 479)
    # 1024 x 768: short 768 -> 479, long int(479 * 1024 / 768) = 638 > 480 -> long 480, short int(480 * 479 / 638) = 360
    assert detector_frame(1024, 768) == (480, 360) and detector_frame(768, 1024) == (360, 480)


def test_2d_position_follows_the_iou_rule():
    a = (0.0, 0.0, 100.0, 100.0)
    # B beside A, no overlap: dx = 150 > 0 and |dx| > |dy| = 0, IoU 0 < 0.1 -> 1
    assert position_2d("on the left of", a, (150.0, 0.0, 250.0, 100.0)) == 1.0
    # B overlapping: dx = 50, IoU = 50*100 / (10000 + 10000 - 5000) = 1/3 >= 0.1 -> 0.1 / (1/3) = 0.3
    b = (50.0, 0.0, 150.0, 100.0)
    assert position_2d("on the left of", a, b) == pytest.approx(0.3)
    assert position_2d("on the right of", a, b) == 0.0  # dx > 0: B is right of A, so A is not right of B
    assert position_2d("on the right of", b, a) == pytest.approx(0.3)
    # vertical: B below A (dy = 150 > 0, |dy| > |dx|) -> "A on the top of B"; "on top of" has no branch -> 0
    below = (0.0, 150.0, 100.0, 250.0)
    assert position_2d("on the top of", a, below) == 1.0 and position_2d("on the bottom of", below, a) == 1.0
    assert position_2d("on top of", a, below) == 0.0 and position_2d(None, a, below) == 0.0
    # dominant axis: dx = 100, dy = 120 -> |dx| <= |dy|, so not "left of" (0) though B is to the right
    assert position_2d("on the left of", a, (100.0, 120.0, 200.0, 220.0)) == 0.0


def test_2d_near_uses_the_150_px_rule_with_or():
    a = (0.0, 0.0, 10.0, 10.0)
    # dx = 200, dy = 300: both >= 150 -> 150 / max(200, 300) = 0.5
    assert position_2d("near", a, (200.0, 300.0, 210.0, 310.0)) == pytest.approx(0.5)
    # dx = 100 < 150 (dy = 300): OR -> 1
    assert position_2d("next to", a, (100.0, 300.0, 110.0, 310.0)) == 1.0
    # dx = dy = 150 exactly: neither < 150 -> 150 / 150 = 1 too; dx = dy = 600 -> 0.25
    assert position_2d("on side of", a, (600.0, 600.0, 610.0, 610.0)) == pytest.approx(0.25)


def test_2d_score_weights_confidences_and_cuts_below_half():
    a, b = (0.0, 0.0, 100.0, 100.0), (50.0, 0.0, 150.0, 100.0)
    dets = [Det("dog", 0.9, a), Det("cat", 0.8, b), Det("dog", 0.6, (300.0, 0.0, 400.0, 100.0))]
    # exact match, first (best) "dog" = a: 0.25*0.9 + 0.25*0.8 + 0.5*0.3 = 0.225 + 0.2 + 0.15 = 0.575
    assert spatial_2d_score("dog", "cat", "on the left of", dets)[0] == pytest.approx(0.575)
    # position 0 (wrong side): 0.425 < 0.5 -> 0
    assert spatial_2d_score("dog", "cat", "on the right of", dets)[0] == 0.0
    # one object found: 0.25 * 0.9 = 0.225 -> below 0.5 -> 0; "dogs" never matches "dog" (exact)
    assert spatial_2d_score("dog", "bird", "near", dets)[0] == 0.0
    assert spatial_2d_score("dogs", "cat", "near", dets)[1]["matched"] == [None, 1]
    assert spatial_2d_score(None, None, "near", dets)[0] == 0.0  # --complex parsing found no pair


def test_numeracy_merges_same_label_boxes_above_0_9():
    # +1 areas: (0,0,99,99) and (1,1,100,100) are 100x100 each, inter 99*99 = 9801, IoU 9801/10199 = 0.961 > 0.9 -> merged
    # (10,10,19,19) inside (0,0,99,99): inter / its area = 1 > 0.9 -> merged; (0,0,99,120): IoU 0.826 but inter/area_a = 1
    # (50,0,149,99): inter 50*100 = 5000, IoU 1/3, inter/area = 0.5 -> kept; a "cat" on the same box -> kept (other label)
    boxes = [(0, 0, 99, 99), (1, 1, 100, 100), (10, 10, 19, 19), (0, 0, 99, 120), (50, 0, 149, 99)]
    dets = [Det("dog", 0.9 - 0.1 * i, tuple(map(float, b))) for i, b in enumerate(boxes)] + [Det("cat", 0.3, (0.0, 0.0, 99.0, 99.0))]
    kept = merge_duplicates(dets)
    assert [(d.label, d.box) for d in kept] == [
        ("dog", (0.0, 0.0, 99.0, 99.0)),
        ("dog", (50.0, 0.0, 149.0, 99.0)),
        ("cat", (0.0, 0.0, 99.0, 99.0)),
    ]


SINGULAR, PLURAL = ["boy", "phone", "fish", "apple"], ["boys", "phones", "fish", "apples"]


def test_numeracy_reads_number_words_and_objects():
    assert parse_counts("four boys and three phones".split(), SINGULAR, PLURAL) == (["boy", "phone"], [4, 3])
    assert parse_counts("a fish and two fish".split(), SINGULAR, PLURAL) == (["fish", "fish"], [1, 2])
    assert parse_counts("one apple".split(), SINGULAR, PLURAL) == (["apple"], [1])
    assert parse_counts("a boys".split(), SINGULAR, PLURAL) == (["boy"], [])  # w2n cannot read "a": the count is skipped
    assert parse_counts("nine boys".split(), SINGULAR, PLURAL) == ([], [])  # not a number word upstream
    with pytest.raises(ParseError):
        parse_counts("boys and two".split(), SINGULAR, PLURAL)  # doc[i+1] past the end
    with pytest.raises(ParseError):
        parse_counts("two apple".split(), SINGULAR, PLURAL)  # object_p.index("apple") raises upstream


def test_numeracy_score_is_half_for_presence_half_for_the_exact_count():
    # boy -> person: present (+0.5/2), 4 persons = 4 (+0.5/2); phone: not a label, "mobile phone" contains it -> renamed to
    # phone (x2): present (+0.25), 2 != 3 -> 0.25 + 0.25 + 0.25 = 0.75
    labels = ["person"] * 4 + ["mobile phone", "mobile phone"]
    score, info = numeracy_score(["boy", "phone"], [4, 3], labels)
    assert score == pytest.approx(0.75) and info["detected"] == [4, 2]
    assert numeracy_score(["apple"], [2], ["dog"])[0] == 0.0
    with pytest.raises(ParseError):
        numeracy_score([], [], labels)  # 1 / len(my_obj)
    with pytest.raises(ParseError):
        numeracy_score(["boy"], [], ["person"])  # misaligned counts: num_obj[0] fails upstream


def test_3d_position_compares_mean_depth_in_the_transposed_boxes():
    depth = np.zeros((10, 10), dtype=np.float32)
    depth[0:5, :] = 1.0  # rows 0-4; upstream reads depth[x_min:x_max, y_min:y_max], i.e. rows by x
    a = (0.0, 0.0, 5.0, 5.0)  # rows 0-4, cols 0-4 -> mean 1
    b = (3.0, 0.0, 10.0, 5.0)  # rows 3-9 -> (2 ones + 5 zeros) / 7 = 2/7; diff = 5/7 > 0
    # IoU: overlap 2 x 5 = 10; areas 25 + 35 - 10 = 50 -> 0.2; 0 < 0.2 < 0.5 and A nearer -> 0.2 / 0.5 = 0.4
    assert position_3d("in front of", a, b, depth) == pytest.approx(0.4)
    assert position_3d("behind", a, b, depth) == 0.0 and position_3d("hidden", b, a, depth) == pytest.approx(0.4)
    # IoU 25/30 = 0.83 > 0.5 and A nearer (1 vs 5/6) -> 1; no overlap -> 0 whatever the depth
    assert position_3d("in front of", a, (0.0, 0.0, 6.0, 5.0), depth) == 1.0
    assert position_3d("in front of", a, (6.0, 6.0, 9.0, 9.0), depth) == 0.0
    # the transpose: A at x 5-10, y 0-5 (top right, where the true map is 1) reads rows 5-9 -> mean 0; B at x 2-7 reads
    # rows 2-6 -> 3/5. A is read as farther: "behind" with IoU (2 x 5) / (25 + 25 - 10) = 0.25 -> 0.25 / 0.5 = 0.5
    top_right, b = (5.0, 0.0, 10.0, 5.0), (2.0, 0.0, 7.0, 5.0)
    assert position_3d("behind", top_right, b, depth) == pytest.approx(0.5)
    assert position_3d("in front of", top_right, b, depth) == 0.0


def test_3d_score_matches_by_substring_and_has_no_cut():
    depth = np.zeros((10, 10), dtype=np.float32)
    depth[0:5, :] = 1.0
    dets = [Det("hot dog", 0.9, (0.0, 0.0, 5.0, 5.0)), Det("dog", 0.2, (3.0, 0.0, 10.0, 5.0)), Det("cat", 0.4, (0.0, 0.0, 5.0, 5.0))]
    # one pass: "dog" in "hot dog" (i1 = 0), then in "dog" (i1 = 1), "cat" (i2 = 2) -> stop. A = (3,0,10,5): mean 2/7,
    # B = (0,0,5,5): mean 1 -> A farther: "behind"; IoU 0.2 -> 0.4. Score 0.25*0.2 + 0.25*0.4 + 0.5*0.4 = 0.35 (no cut)
    score, info = spatial_3d_score("dog", "cat", "behind", dets, depth)
    assert info["matched"] == [1, 2] and score == pytest.approx(0.35)
    assert spatial_3d_score("dog", "bird", "behind", dets, depth)[0] == pytest.approx(0.25 * 0.9)  # first label with "dog"
    with pytest.raises(ParseError):
        spatial_3d_score("dog cat", "cat", "behind", [Det("dog", 0.5, (0, 0, 1, 1)), Det("cat", 0.5, (0, 0, 1, 1))], depth)


def test_prompt_parsing_follows_the_scripts():
    assert relation_in("a girl on the top of a frog", RELATIONS_2D) == "on the top of"
    assert simple_objects(_tokens("a/DET girl/NOUN on/ADP the/DET top/NOUN of/ADP a/DET frog/NOUN")) == ("person", "frog")
    with pytest.raises(ParseError):
        simple_objects(_tokens("a/DET red/ADJ"))
    # --complex: "on top of" at i = 4 -> before it the nearest NOUN "hat"; after it the first NOUN "coat" (not "rack")
    hat = _tokens("The/DET red/ADJ hat/NOUN was/AUX on/ADP top/NOUN of/ADP the/DET brown/ADJ coat/NOUN rack/NOUN ./PUNCT")
    assert complex_objects(hat) == ("hat", "coat")
    # no NOUN after "next to": the PROPN fallback (a PROPN followed by a non-PROPN)
    assert complex_objects(_tokens("Alice/PROPN sat/VERB next/ADV to/ADP Bob/PROPN ./PUNCT")) == ("Alice", "Bob")
    # two prepositions -> four objects -> not exactly two -> (None, None)
    two = _tokens("a/DET cat/NOUN near/ADP a/DET dog/NOUN next/ADV to/ADP a/DET man/NOUN")
    assert complex_objects(two) == (None, None)


def test_complex_is_the_official_3_in_1():
    spatial, action = {"the red hat was on top of the brown coat rack"}, {"the black phone was resting on the brown charger"}
    assert complex_group("The red hat was on top of the brown coat rack.", spatial, action) == "spatial"
    assert complex_group("The black phone was resting on the brown charger.", spatial, action) == "action"
    assert complex_group("A man sat near a dog and ate.", spatial, action) == "spatial_action"
    # attribute 0.8, spatial 0.6, action 0.3: (0.6+0.8)/2 = 0.7; (0.3+0.8)/2 = 0.55; (0.8+0.6+0.3)/3 = 0.5667
    assert three_in_one("spatial", 0.8, 0.6, 0.3) == pytest.approx(0.7)
    assert three_in_one("action", 0.8, 0.6, 0.3) == pytest.approx(0.55)
    assert three_in_one("spatial_action", 0.8, 0.6, 0.3) == pytest.approx(1.7 / 3)


def test_nms_is_class_wise_and_depth_lands_in_the_detector_frame():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    kept = class_wise_nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0, 0, 1, 0]))
    assert kept == [0, 2, 3]  # box 1 overlaps box 0 (IoU 0.81 > 0.5) with the same label; box 2 has another label
    d = to_detector_frame(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 16, 16)
    assert d.shape == (479, 479) and d.min() == 0.0 and d.max() == pytest.approx(1.0) and d[0, 0] < d[-1, -1]
    assert to_detector_frame(torch.zeros(4, 4), 8, 4).shape == (240, 480)  # a flat map: zeros, no NaN


# ----------------------------------------------------------------------------- tiny models through the real loaders

FUNCTION_WORDS = ["a", "an", "the", "on", "of", "to", "in", "and", "is", "was", "were", "next", "near", "behind", "front",
                  "left", "right", "top", "bottom", "side", "one", "two", "three", "four", "five", "six", "seven", "eight"]  # fmt: skip


def tiny_owlv2(folder):
    """A 1-layer OWLv2 at 64 px with a byte-level CLIP tokenizer and the PIL image processor, in the hub's layout."""
    import transformers
    from test_reward_clip import VOCAB_SIZE, _vocab

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=16, eos_token_id=VOCAB_SIZE - 1, bos_token_id=VOCAB_SIZE - 2, **layers)
    config = transformers.Owlv2Config(text_config=text, vision_config=dict(image_size=64, patch_size=16, **layers), projection_dim=32)
    model = transformers.Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():  # spread the class head so some boxes clear the 0.1 threshold
        model.class_head.logit_shift.bias.fill_(2.0)
    model.save_pretrained(str(folder))
    transformers.CLIPTokenizer(vocab=_vocab(), merges=[]).save_pretrained(str(folder))
    image_cls = getattr(transformers, "Owlv2ImageProcessorPil", None) or transformers.Owlv2ImageProcessor
    image_cls(size={"height": 64, "width": 64}).save_pretrained(str(folder))
    return folder


def tiny_dpt(folder):
    import transformers

    torch.manual_seed(1)
    config = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
                                    patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                                    fusion_hidden_size=16)  # fmt: skip
    model = transformers.DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(folder))
    return folder


def tiny_spacy_wheel(folder):
    """An untrained parser (for noun_chunks) + an attribute ruler tagging every content word NOUN and ``red`` ADJ,
    packaged as the en_core_web_sm wheel is laid out; only built-in factories, so any process loads it."""
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("parser")
    ruler = nlp.add_pipe("attribute_ruler")
    gold = Doc(nlp.vocab, words=["a", "dog", "on", "the", "mat"], heads=[1, 1, 1, 4, 2], deps=["det", "ROOT", "prep", "det", "pobj"])
    nlp.initialize(lambda: [Example(nlp.make_doc("a dog on the mat"), gold)])
    ruler.add([[{"LOWER": {"NOT_IN": [*FUNCTION_WORDS, "red"]}, "IS_ALPHA": True}]], {"POS": "NOUN"})
    ruler.add([[{"LOWER": "red"}]], {"POS": "ADJ"})
    ruler.add([[{"LOWER": {"IN": ["a", "an", "the"]}}]], {"POS": "DET"})
    folder.mkdir(parents=True)
    nlp.to_disk(folder / "pipeline")
    with zipfile.ZipFile(folder / "en_core_web_sm-any-py3-none-any.whl", "w") as wheel:
        for f in (folder / "pipeline").rglob("*"):
            if f.is_file():
                wheel.write(f, f"en_core_web_sm/en_core_web_sm-3.8.0/{f.relative_to(folder / 'pipeline')}")
    return folder


def write_lists(folder, spatial=("The red hat was on top of the brown coat rack.",), action=("The black phone was resting.",)):
    """The three upstream files, cut down: new_objects.txt (singular - plural), the complex spatial and action lists."""
    folder.mkdir(parents=True)
    (folder / "new_objects.txt").write_text("boy - boys\r\nairplane - airplanes\r\nphone - phones\r\ndog - dogs\r\n")
    (folder / "complex_val_spatial.txt").write_text("".join(f"{p}\r\n" for p in spatial))
    (folder / "complex_val_action.txt").write_text("".join(f"{p}\r\n" for p in action))
    return folder


@pytest.fixture(scope="module")
def tiny_t2i(tmp_path_factory):
    from test_reward_clip import _tiny_clip, _write_processor
    from test_reward_t2i_blip import _tiny_blip

    root = tmp_path_factory.mktemp("t2i-weights")
    tiny_owlv2(root / "owlv2-base-patch16-ensemble")
    tiny_dpt(root / "dpt-hybrid-midas")
    tiny_spacy_wheel(root / "spacy-en-core-web-sm")
    write_lists(root / "t2i-compbench-lists")
    _tiny_blip(root / "blip-vqa-capfilt-large")
    (root / "clip-vit-base-patch32").mkdir()
    _tiny_clip(root / "clip-vit-base-patch32", projection_dim=16, seed=1, logit_scale=math.log(100.0))
    _write_processor(root / "clip-vit-base-patch32")
    return root


def _load(name, root):
    sets = get_reward_class(name).weight_sets
    return load_reward(name, weights={s: root / s for s in sets}, batch_size=2)


IMAGES = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "prompts"),
    [
        ("t2i_spatial@owlv2", ["a dog next to a phone", "a boy on the left of an airplane", "a dog on the top of a dog"]),
        ("t2i_3d_spatial@owlv2-dpt", ["a dog in front of a phone", "a boy behind an airplane", "a dog hidden by a boy"]),
        ("t2i_numeracy@owlv2", ["two boys", "three dogs and one airplane", "a phone"]),
        ("t2i_complex@owlv2", ["The red hat was on top of the brown coat rack.", "The black phone was resting.", "A dog near a boy."]),
    ],
)
def test_each_reward_scores_images_end_to_end_through_its_loaders(tiny_t2i, name, prompts):
    reward = _load(name, tiny_t2i)
    scores = reward.score(IMAGES, prompts)
    low, high = reward.raw_range
    assert all(math.isfinite(x) and low <= x <= high for x in scores.raw.tolist()), scores.details
    for d in scores.details:
        assert all(0 <= v <= 480 for det in d["detections"] for v in det["box"])  # in the 479-px frame
    assert any(d["detections"] for d in scores.details)  # the tiny detector's shifted class head clears the 0.1 threshold
    if name == "t2i_complex@owlv2":
        assert [d["group"] for d in scores.details] == ["spatial", "action", "spatial_action"]
        # the test tagger marks only "red" ADJ ("brown" is a NOUN to it): the first NOUN after "on top of" is "brown"
        assert scores.details[0]["objects"] == ["hat", "brown"] and "red" not in scores.details[0]["action_text"]
        parts = scores.details[0]
        assert scores.raw[0].item() == pytest.approx((parts["spatial"] + parts["attribute"]) / 2, abs=1e-6)


def test_unparseable_prompts_fail_and_missing_weights_are_named(tiny_t2i, tmp_path, monkeypatch):
    scores = _load("t2i_spatial@owlv2", tiny_t2i).score(IMAGES[:2], ["a dog near a phone", "the on of"])
    assert math.isfinite(scores.raw[0]) and math.isnan(scores.raw[1]) and "NOUN" in scores.details[1]["error"]
    assert math.isnan(_load("t2i_numeracy@owlv2", tiny_t2i).score(IMAGES[:1], ["no count here"]).raw[0])
    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(tmp_path))
    ok, reason = get_reward_class("t2i_3d_spatial@owlv2-dpt").weights_status()
    assert not ok and "flowopd weights download t2i_3d_spatial@owlv2-dpt" in reason
