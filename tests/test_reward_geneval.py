"""GenEval rewards (flowopd.reward_models.geneval) on tiny random-weight models loaded through the real loaders.

Nothing is downloaded: a tiny Mask2Former (Swin backbone, the 80 COCO labels
in transformers' spelling) and a tiny CLIP with a locally built byte-level BPE
tokenizer are saved with ``save_pretrained`` and loaded by ``load_reward``.
Detections are crafted by replacing the model's raw outputs
(``class_queries_logits``, ``masks_queries_logits``), so they pass through the
image processor's real post-processing, the label mapping and the real rules,
against real GenEval metadata records from ../shared/data/geneval.
"""

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from flowopd.reward_models import geneval as G
from flowopd.reward_models import geneval_mmdet as M
from flowopd.reward_models import load_reward
from flowopd.reward_models.geneval_rules import TAGS
from flowopd.reward_models.weights import WeightsMissingError

torch.set_num_threads(1)

M2F_SET = "mask2former-swin-small-coco-instance"
CLIP_SET = "clip-vit-large-patch14"
SIZE = 128  # test images are SIZE x SIZE
GRID = 32  # crafted mask logits are GRID x GRID (the post-processing resizes them)
# transformers' / detectron2's spelling of the COCO instance classes (mouse, remote, keyboard differ from GenEval's)
HF_NAMES = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(c, c) for c in G.GENEVAL_CLASSES]


# ------------------------------------------------------------------ tiny models


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol alone and word-final (``</w>``), plus the two special tokens; no merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


@pytest.fixture(scope="module")
def m2f_dir(tmp_path_factory):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    path = tmp_path_factory.mktemp("m2f")
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=8,
        id2label=dict(enumerate(HF_NAMES)), label2id={n: i for i, n in enumerate(HF_NAMES)},
    )  # fmt: skip
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip")
    vocab = _byte_level_vocab()
    assert len(vocab) == 514
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    (path / "tokenizer_config.json").unlink(missing_ok=True)  # the weight set requires only tokenizer.json
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward(m2f_dir, clip_dir):
    r = load_reward("geneval@hf-m2f", weights={M2F_SET: m2f_dir, CLIP_SET: clip_dir})
    r._ensure_loaded()
    return r


@pytest.fixture(scope="module")
def records(shared_data):
    with open(shared_data / "geneval" / "evaluation_metadata.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def first(records, tag, pred=lambda r: True):
    return next(r for r in records if r["tag"] == tag and pred(r))


# ------------------------------------------------------------------ crafted detector outputs


def crafted_outputs(reward, objects):
    """Raw Mask2Former outputs in which query i is ``objects[i] = (GenEval class, (x0, y0, x1, y1) on the GRID)``."""
    label_of = {c: i for i, c in reward._labels.items()}
    q = reward._model.config.num_queries
    n = reward._model.config.num_labels
    cls = torch.zeros(q, n + 1)
    cls[:, n] = 10.0  # "no object"
    masks = torch.full((q, GRID, GRID), -8.0)
    for i, (name, (x0, y0, x1, y1)) in enumerate(objects):
        cls[i, n] = 0.0
        cls[i, label_of[name]] = 10.0
        masks[i, y0:y1, x0:x1] = 8.0
    return cls, masks


def patch_forward(monkeypatch, reward, per_image):
    """Replace the model's forward so image b gets the crafted outputs of ``per_image[b]``."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerForUniversalSegmentationOutput

    crafted = [crafted_outputs(reward, objs) for objs in per_image]
    seen = []

    def forward(pixel_values=None, pixel_mask=None, **kwargs):
        seen.append(pixel_values.shape[0])
        return Mask2FormerForUniversalSegmentationOutput(
            class_queries_logits=torch.stack([c for c, _ in crafted]), masks_queries_logits=torch.stack([m for _, m in crafted])
        )

    monkeypatch.setattr(reward._model, "forward", forward)
    return seen


def blank_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(n)]


RELATION_BOXES = {  # target box, then a box in the given relation to it (GRID coords)
    "left of": ((18, 10, 28, 20), (2, 10, 12, 20)),
    "right of": ((2, 10, 12, 20), (18, 10, 28, 20)),
    "above": ((10, 18, 20, 28), (10, 2, 20, 12)),
    "below": ((10, 2, 20, 12), (10, 18, 20, 28)),
}


# ------------------------------------------------------------------ tests


def test_class_names_are_genevals_object_names(shared_data):
    names = (shared_data / "geneval" / "object_names.txt").read_text().split("\n")
    assert list(G.GENEVAL_CLASSES) == [n.strip() for n in names if n.strip()]
    mapping = G.geneval_label_map(dict(enumerate(HF_NAMES)))
    assert mapping[64] == "computer mouse" and mapping[65] == "tv remote" and mapping[66] == "computer keyboard"
    assert mapping[60] == "dining table" and mapping[57] == "couch" and mapping[62] == "tv"
    with pytest.raises(G.FlowOPDError, match="not one of GenEval"):
        G.geneval_label_map({**dict(enumerate(HF_NAMES)), 5: "LABEL_5"})
    with pytest.raises(G.FlowOPDError, match="80 COCO"):
        G.geneval_label_map(dict(enumerate(HF_NAMES[:79])))


def test_color_classifier_matches_a_hand_computed_clip_argmax(reward):
    """Mask on #999 grey, crop to the box, 3 templates normalised+averaged+renormalised, cosine argmax."""
    colors = reward._colors
    model, tok, proc = colors.model, colors.tokenizer, colors.image_processor
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[20:70, 30:90] = True
    mask[20:40, 30:50] = False  # not a rectangle: the grey shows inside the box
    box = (30.0, 20.0, 90.0, 70.0)

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def image_emb(arr):
        pix = proc(images=[Image.fromarray(arr)], return_tensors="pt")["pixel_values"]
        e = feats(model.get_image_features(pixel_values=pix))[0]
        return e / e.norm()

    def text_weights(templates):
        rows = []
        for c in G.COLORS:
            t = tok([tp.format(c=c) for tp in templates], padding=True, return_tensors="pt")
            e = feats(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
        return torch.stack(rows)

    templates = ["a photo of a {c} dog", "a photo of a {c}-colored dog", "a photo of a {c} object"]
    masked = np.where(mask[..., None], image, np.uint8(153))[20:70, 30:90]
    with torch.no_grad():
        expected = image_emb(masked) @ text_weights(templates).T
        got = colors.similarities(image, [(box, mask)], "dog")[0]
        unmasked = image_emb(image[20:70, 30:90]) @ text_weights(templates).T
        one_template = image_emb(masked) @ text_weights(templates[:1]).T
    assert torch.allclose(got, expected, atol=1e-5)
    assert colors.classify(image, [(box, mask)], "dog") == [G.COLORS[int(expected.argmax())]]
    # the check can tell: the mask and the template averaging both change the similarities
    assert not torch.allclose(got, unmasked, atol=1e-4) and not torch.allclose(got, one_template, atol=1e-4)
    assert colors.text_classifier("dog") is colors.text_classifier("dog")  # cached per class
    assert G.COLOR_TEMPLATES == tuple(t.replace("dog", "{classname}") for t in templates)


def test_crafted_detections_go_through_post_processing_and_rules(reward, records, monkeypatch):
    counting = first(records, "counting", lambda r: r["include"][0]["count"] == 2)
    position = first(records, "position")
    two = first(records, "two_object")
    mouse = first(records, "single_object", lambda r: r["include"][0]["class"] == "computer mouse")
    cnt_cls = counting["include"][0]["class"]
    a, b = position["include"][0]["class"], position["include"][1]["class"]
    target_box, rel_box = RELATION_BOXES[position["include"][1]["position"][0]]
    cases = [
        (counting, [(cnt_cls, (2, 10, 10, 20)), (cnt_cls, (20, 10, 28, 20))], True, 1.0),
        (counting, [(cnt_cls, (1, 10, 8, 20)), (cnt_cls, (12, 10, 19, 20)), (cnt_cls, (23, 10, 30, 20))], False, 0.5),
        (position, [(a, target_box), (b, rel_box)], True, 1.0),
        (position, [(a, rel_box), (b, target_box)], False, 2 / 3),  # counts right (1, 1), relation wrong (0)
        (two, [(two["include"][0]["class"], (4, 4, 20, 20))], False, 0.5),
        (mouse, [("computer mouse", (8, 8, 24, 24))], True, 1.0),  # label "mouse" in the model's config
    ]
    seen = patch_forward(monkeypatch, reward, [objs for _, objs, _, _ in cases])
    scores = reward.score(blank_images(len(cases)), [m["prompt"] for m, *_ in cases], [m for m, *_ in cases])
    assert seen == [len(cases)]  # one batched forward
    for (meta, objs, correct, partial), raw, d in zip(cases, scores.raw.tolist(), scores.details):
        assert d["correct"] is correct, (meta["prompt"], d)
        assert raw == pytest.approx(partial)
        assert d["tag"] == meta["tag"]
        assert sorted(x["class"] for x in d["detections"]) == sorted(c for c, _ in objs)
        assert all(x["score"] > 0.9 and "color" not in x for x in d["detections"])
        for x in d["detections"]:  # box from the mask, in image pixels (GRID -> SIZE)
            grid = next(bx for c, bx in objs if c == x["class"] and abs(bx[0] * SIZE / GRID - x["box"][0]) <= 2)
            assert np.allclose(x["box"], [v * SIZE / GRID for v in grid], atol=2)
    d = scores.details
    assert d[1]["reasons"] == [f"expected {cnt_cls}<3, found 3"]
    assert d[3]["reasons"][0].startswith(f"expected {b} {position['include'][1]['position'][0]} target")
    assert d[4]["reasons"] == [f"expected {two['include'][1]['class']}>=1, found 0"]
    left_right = sorted(x["box"][0] for x in d[0]["detections"])
    assert left_right[0] < SIZE / 2 < left_right[1]


def test_colour_is_computed_only_for_colour_clauses(reward, records, monkeypatch):
    colors_meta = first(records, "colors")
    single = first(records, "single_object")
    cls = colors_meta["include"][0]["class"]
    patch_forward(monkeypatch, reward, [[(cls, (6, 6, 26, 26))], [(single["include"][0]["class"], (6, 6, 26, 26))]])
    calls = []
    real = reward._colors.classify
    monkeypatch.setattr(reward._colors, "classify", lambda *a: calls.append(a) or real(*a))
    images = blank_images(2, seed=5)
    scores = reward.score(images, [colors_meta["prompt"], single["prompt"]], [colors_meta, single])
    assert [c[2] for c in calls] == [cls]  # once (strict and partial rules share it), and not for the single-object image
    det = scores.details[0]["detections"][0]
    ((box, mask),) = calls[0][1]
    assert np.array_equal(calls[0][0], np.asarray(images[0])) and mask.shape == (SIZE, SIZE)
    assert G.boxes_from_masks(mask[None])[0].tolist() == list(box) == det["box"]  # the object's own mask and box
    assert abs(int(mask.sum()) - 80 * 80) <= 4 * 80 and np.allclose(box, [24, 24, 104, 104], atol=2)
    assert det["color"] == real(np.asarray(images[0]), [(box, mask)], cls)[0]
    assert scores.details[0]["correct"] == (det["color"] == colors_meta["include"][0]["color"])
    assert scores.raw[0].item() == (1.0 if scores.details[0]["correct"] else 0.5)
    assert "color" not in scores.details[1]["detections"][0]


def test_real_forward_scores_in_unit_interval_with_details(reward, records):
    metas = [first(records, t) for t in ("single_object", "two_object", "counting", "colors", "position", "color_attr")]
    scores = reward.score(blank_images(len(metas), seed=7), [m["prompt"] for m in metas], metas)
    assert scores.raw.shape == (len(metas),) and torch.equal(scores.normalized, scores.raw)
    assert bool(((scores.raw >= 0) & (scores.raw <= 1)).all())
    for meta, d in zip(metas, scores.details):
        assert set(d) == {"correct", "tag", "reasons", "detections"} and d["tag"] == meta["tag"]
        assert isinstance(d["correct"], bool) and isinstance(d["reasons"], list)
        assert all(x["score"] > G.DETECTION_FLOOR and x["class"] in G.GENEVAL_CLASSES for x in d["detections"])


def test_mixed_sizes_and_a_legacy_processor_config(tmp_path, m2f_dir, clip_dir, records):
    """Images of different sizes go one at a time; ``"size": 64`` (older configs) gets the default longest edge."""
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).symlink_to(m2f_dir / f)
    cfg = {"image_processor_type": "Mask2FormerImageProcessor", "size": 64, "size_divisor": 32}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    r = load_reward("geneval@hf-m2f", weights={M2F_SET: tmp_path, CLIP_SET: clip_dir})
    meta = first(records, "single_object")
    images = [Image.new("RGB", (SIZE, SIZE)), Image.new("RGB", (SIZE, 96))]
    scores = r.score(images, [meta["prompt"]] * 2, [meta] * 2)
    assert r._processor_kwargs == {"size": {"shortest_edge": 64, "longest_edge": 1333}}
    assert len(scores) == 2 and not bool(scores.failed.any())


def test_metadata_required_and_applies_to(reward, records):
    meta = first(records, "single_object")
    assert reward.needs_metadata and reward.applies_to(meta["prompt"], meta)
    assert not reward.applies_to("a photo of a dog", None) and not reward.applies_to("x", {"tag": "single_object"})
    with pytest.raises(ValueError, match="no GenEval metadata"):
        reward.score(blank_images(1), [meta["prompt"]])
    with pytest.raises(ValueError, match="no GenEval metadata"):
        reward.score(blank_images(1), [meta["prompt"]], [{"prompt": meta["prompt"]}])


def test_missing_weights_one_line_error(tmp_path, clip_dir):
    r = load_reward("geneval@hf-m2f", weights={M2F_SET: tmp_path / "none", CLIP_SET: clip_dir})
    with pytest.raises(WeightsMissingError) as exc:
        r.score(blank_images(1), ["a photo of a dog"], [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]}])
    msg = str(exc.value)
    assert "\n" not in msg and "flowopd weights download geneval@hf-m2f" in msg


# ------------------------------------------------------------------ the mmdet backend (mmdet is not installed here)


def test_mmdet_arrays_to_detections():
    bboxes = np.array([[0, 0, 10, 10, 0.95], [20, 0, 30, 10, 0.2], [5, 5, 9, 9, 0.5]], dtype=np.float32)
    labels = np.array([16, 16, 64])
    masks = np.zeros((3, 12, 32), dtype=bool)
    dets = G.detections_from_arrays(bboxes, labels, masks)
    assert [(d.cls, d.score) for d in dets] == [("dog", pytest.approx(0.95)), ("computer mouse", pytest.approx(0.5))]
    assert dets[0].box == (0.0, 0.0, 10.0, 10.0) and dets[0].mask.shape == (12, 32)
    # mmdet 3.x DetDataSample.pred_instances (tensors, [N, 4] boxes + scores)
    res3 = types.SimpleNamespace(
        pred_instances=types.SimpleNamespace(
            bboxes=torch.tensor(bboxes[:, :4]), scores=torch.tensor(bboxes[:, 4]), labels=torch.tensor(labels), masks=torch.tensor(masks)
        )
    )
    b, lab, m, s = G.mmdet_result_arrays(res3)
    assert [(d.cls, d.box) for d in G.detections_from_arrays(b, lab, m, s)] == [(d.cls, d.box) for d in dets]
    # mmdet 2.x (bbox_result, segm_result): per-class lists, as the official evaluator reads them
    per_class = [np.zeros((0, 5), np.float32) for _ in range(80)]
    segm = [[] for _ in range(80)]
    per_class[16], segm[16] = bboxes[:2], [masks[0], masks[1]]
    per_class[64], segm[64] = bboxes[2:], [masks[2]]
    b, lab, m, s = G.mmdet_result_arrays((per_class, segm))
    assert [(d.cls, d.box, d.score) for d in G.detections_from_arrays(b, lab, m, s)] == [(d.cls, d.box, d.score) for d in dets]
    assert G.detections_from_arrays(np.zeros((0, 5)), np.zeros(0)) == []
    box_masks = np.zeros((2, 8, 8), bool)
    box_masks[0, 2:5, 3:7] = True
    assert G.boxes_from_masks(box_masks).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_mmdet_reward_detect_and_rules_with_a_stand_in_mmdet(monkeypatch, records):
    """GenEvalMMDet._detect + _score on an mmdet 3.x-shaped result from a stand-in ``mmdet.apis`` (BGR input checked)."""
    meta = first(records, "position")
    a, b = meta["include"][0]["class"], meta["include"][1]["class"]
    (tx0, ty0, tx1, ty1), (rx0, ry0, rx1, ry1) = RELATION_BOXES[meta["include"][1]["position"][0]]
    got_images = []

    def inference_detector(model, imgs):
        got_images.extend(imgs)
        inst = types.SimpleNamespace(
            bboxes=torch.tensor([[tx0, ty0, tx1, ty1], [rx0, ry0, rx1, ry1]], dtype=torch.float32) * 4,
            scores=torch.tensor([0.8, 0.7]),
            labels=torch.tensor([G.GENEVAL_CLASSES.index(a), G.GENEVAL_CLASSES.index(b)]),
        )
        return [types.SimpleNamespace(pred_instances=inst) for _ in imgs]

    apis = types.ModuleType("mmdet.apis")
    apis.inference_detector = inference_detector
    monkeypatch.setitem(sys.modules, "mmdet", types.ModuleType("mmdet"))
    monkeypatch.setitem(sys.modules, "mmdet.apis", apis)
    r = M.GenEvalMMDet()
    r._loaded, r._model, r._classnames = True, object(), list(G.GENEVAL_CLASSES)
    red = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    red[..., 0] = 255
    scores = r.score(torch.from_numpy(red).permute(0, 3, 1, 2), [meta["prompt"]], [meta])
    assert got_images[0][0, 0].tolist() == [0, 0, 255]  # mmdet takes BGR arrays
    assert scores.details[0]["correct"] is True and scores.raw.tolist() == [1.0]
    assert r.name == "geneval" and r.requires == ("mmdet", "mmcv")


def test_mmdet_reward_not_available_without_mmdet():
    import importlib.util

    if importlib.util.find_spec("mmdet") is not None:
        pytest.skip("mmdet is installed")
    available, reason = load_reward("geneval").weights_status()
    assert available is False
    assert "mmdet" in reason and "pip install 'flowopd[geneval-mmdet]'" in reason and "docs/install.md" in reason


def test_mmdet_checkpoint_is_verified_before_unpickling(tmp_path):
    v3, v2 = (k.filename for k in M.KNOWN_CHECKPOINTS)
    assert M.verified_checkpoint(tmp_path) is None
    (tmp_path / "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth").write_bytes(b"renamed")  # GenEval's name: not loaded
    assert M.verified_checkpoint(tmp_path) is None
    (tmp_path / v2).write_bytes(b"2.x layout")
    with pytest.raises(G.FlowOPDError, match="mmdet 2.x checkpoint") as exc:
        M.verified_checkpoint(tmp_path, mmdet_major=3)
    assert v3 in str(exc.value) and "\n" not in str(exc.value)
    (tmp_path / v3).write_bytes(b"not the checkpoint")
    with pytest.raises(G.FlowOPDError, match="sha256"):
        M.verified_checkpoint(tmp_path, mmdet_major=3)
    assert M.verified_checkpoint(tmp_path, 3, hasher=lambda p: "c9d0c4f2" + "0" * 56) == tmp_path / v3
    assert M.sha256_of(tmp_path / v3) == __import__("hashlib").sha256(b"not the checkpoint").hexdigest()


def test_official_mmdet_backend_end_to_end(tmp_path, clip_dir, records, monkeypatch):
    """Where the `geneval-mmdet` extra is installed: the real mmdet config, init_detector and inference_detector.

    A randomly initialised Mask2Former Swin-S (built from mmdet's own config) is saved as a checkpoint under the
    known file name; the sha256 check is pointed at it, then every tag of the official metadata is scored.
    """
    pytest.importorskip("mmdet", reason="mmdet is not installed (the geneval-mmdet extra; mmcv compiles for ~25 min)")
    from mmdet.apis import init_detector

    torch.manual_seed(0)
    model = init_detector(str(M.GenEvalMMDet.config_path()), None, device="cpu")
    known = M.KNOWN_CHECKPOINTS[0]
    folder = tmp_path / "m2f"
    folder.mkdir()
    meta = {"dataset_meta": {"classes": tuple(model.dataset_meta["classes"])}}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, folder / known.filename)
    monkeypatch.setattr(M, "sha256_of", lambda path: known.sha256_prefix + "0" * 56)
    reward = load_reward("geneval", weights={"geneval-mmdet-mask2former": folder, CLIP_SET: clip_dir})
    metas = [first(records, tag) for tag in TAGS]
    images = torch.rand(len(metas), 3, SIZE, SIZE)
    scores = reward.score(images, [m["prompt"] for m in metas], metas)
    assert len(metas) == 6 and ((scores.raw >= 0) & (scores.raw <= 1)).all()
    assert all(isinstance(d["correct"], bool) and d["tag"] == m["tag"] for d, m in zip(scores.details, metas))
    assert reward._classnames == list(G.GENEVAL_CLASSES)
