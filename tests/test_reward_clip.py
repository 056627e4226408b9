"""PickScore, CLIPScore, the LAION aesthetic predictor and HPS v2/v2.1 on tiny random weights.

Every reward is loaded through its real loader (``load_reward(name, weights={set: folder})``)
from files written here: tiny ``transformers`` CLIPs saved with ``save_pretrained``, a
byte-level CLIP tokenizer built locally (no hub), a random aesthetic MLP saved as a
``.pth`` state dict, and a tiny open_clip-layout HPS checkpoint produced by an
independent reference implementation of open_clip's forward written below.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from flowopd.reward_models import load_reward
from flowopd.reward_models.weights import WeightsMissingError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; the session's setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONTEXT = 77
PROMPTS = ["a red cat", "two dogs on a beach, at sunset", 'a sign that says "hello 42"', "", "A painting of a Lighthouse!"]


# ------------------------------------------------------------------ tiny assets


def _vocab() -> dict[str, int]:
    """Every byte-level character, alone and word-final, then the specials (EOT has the largest id, as in CLIP)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


VOCAB_SIZE = len(_vocab())  # 514


def _write_processor(folder) -> None:
    """``tokenizer.json`` + ``preprocessor_config.json`` only: what the weight sets require."""
    import transformers

    tok = transformers.CLIPTokenizer(vocab=_vocab(), merges=[]) if _tokenizer_takes_vocab() else None
    if tok is None:  # transformers 4.x: build the fast tokenizer from a vocab/merges pair on disk
        import json

        (folder / "vocab.json").write_text(json.dumps(_vocab()))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        tok = transformers.CLIPTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    proc_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    proc_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    for f in folder.iterdir():
        if f.name not in ("tokenizer.json", "preprocessor_config.json", "config.json", "model.safetensors"):
            f.unlink()


def _tokenizer_takes_vocab() -> bool:
    import inspect

    import transformers

    return "vocab" in inspect.signature(transformers.CLIPTokenizer.__init__).parameters


def _tiny_clip(folder, projection_dim: int, seed: int, logit_scale: float):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CONTEXT,
            eos_token_id=VOCAB_SIZE - 1,
            bos_token_id=VOCAB_SIZE - 2,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    model.save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-rewards")
    proc = root / "clip-vit-h-14-processor"
    pick = root / "pickscore_v1"
    clip_l = root / "clip-vit-large-patch14"
    for d in (proc, pick, clip_l):
        d.mkdir()
    _write_processor(proc)
    _tiny_clip(pick, projection_dim=24, seed=0, logit_scale=math.log(100.0))
    _tiny_clip(clip_l, projection_dim=768, seed=1, logit_scale=math.log(100.0))
    _write_processor(clip_l)
    return {"proc": proc, "pick": pick, "clip_l": clip_l, "root": root}


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (len(PROMPTS), 3, 40, 56), generator=g, dtype=torch.uint8)


def _hf_inputs(folder, images, prompts, padding=True):
    """Pixel values and token ids straight from transformers (not through the reward's helpers)."""
    import transformers

    from flowopd.reward_models.base import to_uint8_hwc

    tok_cls = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
    proc_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    tok = tok_cls.from_pretrained(str(folder))
    proc = proc_cls.from_pretrained(str(folder))
    pix = proc(images=list(to_uint8_hwc(images)), return_tensors="pt")["pixel_values"]
    text = tok(list(prompts), padding=padding, truncation=True, max_length=CONTEXT, return_tensors="pt")
    return pix, text


def _feat(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hand_cosines(model_dir, proc_dir, images, prompts):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(model_dir)).float().eval()
    pix, text = _hf_inputs(proc_dir, images, prompts)
    with torch.no_grad():
        img = _feat(model.get_image_features(pixel_values=pix))
        txt = _feat(model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return model, (img * txt).sum(-1), img


# ------------------------------------------------------------------ (a) PickScore, (b) CLIPScore, (c) aesthetic


def test_pickscore_is_logit_scale_times_cosine(assets, images):
    reward = load_reward("pickscore_v1", weights={"pickscore_v1": assets["pick"], "clip-vit-h-14-processor": assets["proc"]}, batch_size=2)
    scores = reward.score(images, PROMPTS)
    model, cos, _ = _hand_cosines(assets["pick"], assets["proc"], images, PROMPTS)
    expected = model.logit_scale.exp().detach() * cos
    torch.testing.assert_close(scores.raw, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores.normalized, scores.raw / 26)
    assert [d["cosine"] for d in scores.details] == pytest.approx(cos.tolist(), abs=1e-5)
    assert reward.version == "1" and reward.name == "pickscore_v1"


def test_clipscore_is_logits_per_image_diagonal(assets, images):
    reward = load_reward("clipscore", weights={"clip-vit-large-patch14": assets["clip_l"]}, batch_size=3)
    scores = reward.score(images, PROMPTS)
    model, cos, _ = _hand_cosines(assets["clip_l"], assets["clip_l"], images, PROMPTS)
    expected = model.logit_scale.exp().detach() * cos  # = diag(logits_per_image), exp(logit_scale) = 100
    torch.testing.assert_close(scores.raw, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores.normalized, scores.raw / 30)


def test_clipscore_vit_b_32_reads_its_own_weight_set(assets, images):
    """T2I-CompBench's non-spatial model: the same formula on the ViT-B/32 weight set; details carry the cosine it reports."""
    reward = load_reward("clipscore@vit-b-32", weights={"clip-vit-base-patch32": assets["clip_l"]})
    scores = reward.score(images, PROMPTS)
    model, cos, _ = _hand_cosines(assets["clip_l"], assets["clip_l"], images, PROMPTS)
    torch.testing.assert_close(scores.raw, model.logit_scale.exp().detach() * cos, atol=1e-4, rtol=1e-5)
    assert [d["cosine"] for d in scores.details] == pytest.approx(cos.tolist(), abs=1e-5)
    assert reward.version != load_reward("clipscore").version  # another model: another cache key and metric
    with pytest.raises(ValueError, match="clip-vit-base-patch32"):
        load_reward("clipscore@vit-b-32", weights={"clip-vit-large-patch14": assets["clip_l"]})


class _RefAestheticMLP(nn.Module):
    """The improved-aesthetic-predictor MLP, written out independently (keys layers.0/2/4/6/7)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(768, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def test_aesthetic_is_mlp_of_normalised_image_embedding(assets, images, tmp_path):
    torch.manual_seed(5)
    mlp = _RefAestheticMLP().eval()
    with torch.no_grad():
        mlp.layers[7].bias.fill_(5.0)  # a mid-scale offset, like the real predictor's ~1-10 range
    torch.save(mlp.state_dict(), tmp_path / "aesthetic-model.pth")
    assert sorted({k.split(".")[1] for k in mlp.state_dict()}) == ["0", "2", "4", "6", "7"]
    reward = load_reward(
        "aesthetic_laion_v2", weights={"clip-vit-large-patch14": assets["clip_l"], "aesthetic-mlp-laion-v2": tmp_path}, batch_size=2
    )
    scores = reward.score(images, PROMPTS)
    _, _, img = _hand_cosines(assets["clip_l"], assets["clip_l"], images, PROMPTS)
    with torch.no_grad():
        expected = mlp(img).squeeze(-1)
    torch.testing.assert_close(scores.raw, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.normalized, scores.raw / 10)
    # prompt-free: other prompts give the same scores
    torch.testing.assert_close(reward.score(images, ["x"] * len(PROMPTS)).raw, scores.raw)


# ------------------------------------------------------------------ (d) HPS: a reference open_clip forward


class _RefBlock(nn.Module):
    """open_clip ``ResidualAttentionBlock`` (pre-LN, ``nn.MultiheadAttention``, GELU MLP ``c_fc``/``c_proj``), sequence-first."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, mlp), gelu=nn.GELU(), c_proj=nn.Linear(mlp, width)))

    def forward(self, x, attn_mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _RefTransformer(nn.Module):
    def __init__(self, width, layers, heads, mlp):
        super().__init__()
        self.resblocks = nn.ModuleList([_RefBlock(width, heads, mlp) for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class _RefVisual(nn.Module):
    """open_clip ``VisionTransformer`` with class-token pooling: conv1 -> [cls; patches] + pos -> ln_pre -> blocks -> ln_post -> @ proj."""

    def __init__(self, width, layers, heads, mlp, patch, image, dim):
        super().__init__()
        grid = image // patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _RefTransformer(width, layers, heads, mlp)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)  # [B, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class _RefOpenCLIP(nn.Module):
    """open_clip ``CLIP`` (ViT image tower + the default text tower): the key layout of HPS checkpoints."""

    def __init__(self, v_width, v_layers, v_heads, v_mlp, patch, image, t_width, t_layers, t_heads, t_mlp, vocab, context, dim):
        super().__init__()
        self.visual = _RefVisual(v_width, v_layers, v_heads, v_mlp, patch, image, dim)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, t_width))
        self.transformer = _RefTransformer(t_width, t_layers, t_heads, t_mlp)
        self.ln_final = nn.LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.randn(t_width, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), attn_mask=self.attn_mask).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


TINY = dict(
    v_width=160,
    v_layers=2,
    v_heads=2,
    v_mlp=640,
    patch=8,
    image=32,
    t_width=128,
    t_layers=2,
    t_heads=2,
    t_mlp=512,
    vocab=VOCAB_SIZE,
    context=CONTEXT,
    dim=64,
)


def _tiny_ref(seed: int) -> _RefOpenCLIP:
    """Random weights everywhere (LayerNorm gains and biases too), so a swapped or untransposed tensor shows."""
    torch.manual_seed(seed)
    ref = _RefOpenCLIP(**TINY)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("logit_scale"):
                continue
            if "ln" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.05 if p.ndim > 1 else 0.1)
    return ref.eval()


def _ref_cosines(ref, pix, ids):
    with torch.no_grad():
        img = ref.encode_image(pix)
        txt = ref.encode_text(ids)
    return (img / img.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1)


def test_open_clip_conversion_matches_reference_forward():
    from transformers import CLIPModel

    from flowopd.reward_models.hps import clip_config, config_from_open_clip_state_dict, convert_open_clip_state_dict

    ref = _tiny_ref(0)
    sd = ref.state_dict()
    config = clip_config(
        vision=dict(hidden_size=160, num_hidden_layers=2, num_attention_heads=2, intermediate_size=640, patch_size=8, image_size=32),
        text=dict(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=512,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=CONTEXT,
        ),
        projection_dim=64,
    )
    inferred = config_from_open_clip_state_dict(sd)  # head widths 80 / 64 as ViT-H-14
    for tower in ("vision_config", "text_config"):
        assert getattr(inferred, tower).to_dict() == getattr(config, tower).to_dict()
    hf = CLIPModel(config).eval()
    hf.load_state_dict(convert_open_clip_state_dict({**sd, "attn_mask": ref.attn_mask}, config), strict=True)

    g = torch.Generator().manual_seed(1)
    pix = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(1, VOCAB_SIZE - 2, (3, CONTEXT), generator=g)
    for row, eot in enumerate((5, 17, CONTEXT - 1)):  # EOT (the largest id) then zero padding, as open_clip tokenises
        ids[row, 0], ids[row, eot] = VOCAB_SIZE - 2, VOCAB_SIZE - 1
        ids[row, eot + 1 :] = 0
    with torch.no_grad():
        torch.testing.assert_close(_feat(hf.get_image_features(pixel_values=pix)), ref.encode_image(pix), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(_feat(hf.get_text_features(input_ids=ids)), ref.encode_text(ids), atol=1e-5, rtol=1e-4)
    assert hf.logit_scale.item() == pytest.approx(ref.logit_scale.item())

    bad = dict(sd)
    bad["visual.extra.weight"] = torch.zeros(1)
    from flowopd.errors import FlowOPDError

    with pytest.raises(FlowOPDError, match="visual.extra.weight"):
        convert_open_clip_state_dict(bad, config)


def test_vit_h_14_conversion_is_complete_at_full_size():
    """The full ViT-H-14 layout (meta tensors, no memory): inferred config = the published one; every HF key filled with the right shape."""
    from transformers import CLIPModel

    from flowopd.reward_models.hps import config_from_open_clip_state_dict, convert_open_clip_state_dict, vit_h_14_config

    with torch.device("meta"):
        ref = _RefOpenCLIP(1280, 32, 16, 5120, 14, 224, 1024, 24, 16, 4096, 49408, 77, 1024)
        expected = vit_h_14_config()
        hf = CLIPModel(expected)
    config = config_from_open_clip_state_dict(ref.state_dict())
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.patch_size, v.image_size) == (
        1280,
        32,
        16,
        5120,
        14,
        224,
    )
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size, t.vocab_size, t.max_position_embeddings) == (
        1024,
        24,
        16,
        4096,
        49408,
        77,
    )
    assert config.projection_dim == 1024 and v.hidden_act == t.hidden_act == "gelu"
    assert v.to_dict() == expected.vision_config.to_dict() and t.to_dict() == expected.text_config.to_dict()
    converted = convert_open_clip_state_dict(ref.state_dict(), config)
    target = hf.state_dict()
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)


@pytest.fixture(scope="module")
def hps_assets(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("hps")
    ref = _tiny_ref(3)
    torch.save({"state_dict": ref.state_dict(), "epoch": 1}, root / "HPS_v2_compressed.pt")
    return {"dir": root, "ref": ref, "proc": assets["proc"]}


def test_hps_transformers_backend_scores_reference_cosine(hps_assets, images, monkeypatch):
    from flowopd.reward_models import hps

    weights = {"hpsv2": hps_assets["dir"], "clip-vit-h-14-processor": hps_assets["proc"]}
    reward = load_reward("hpsv2", weights=weights, backend="transformers", batch_size=2)
    scores = reward.score(images, PROMPTS)
    pix, text = _hf_inputs(hps_assets["proc"], images, PROMPTS, padding="max_length")
    expected = _ref_cosines(hps_assets["ref"], pix, text["input_ids"])
    torch.testing.assert_close(scores.raw, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.normalized, scores.raw)
    assert scores.details[0]["backend"] == "transformers"
    assert scores.details[0]["score_x100"] == pytest.approx(100 * scores.raw[0].item(), rel=1e-5)

    # converted once, cached beside the checkpoint, reused without converting again
    cache = hps_assets["dir"] / "transformers" / "HPS_v2_compressed"
    assert (cache / "model.safetensors").is_file() and (cache / "flowopd_conversion.json").is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left

    def no_convert(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(hps, "convert_open_clip_state_dict", no_convert)
    again = load_reward("hpsv2", weights=weights, backend="transformers").score(images[:2], PROMPTS[:2])
    torch.testing.assert_close(again.raw, scores.raw[:2], atol=1e-6, rtol=1e-6)


def test_hps_checkpoint_change_is_reconverted_and_v21_reads_its_file(hps_assets, images, tmp_path):
    import shutil

    proc = hps_assets["proc"]
    shutil.copy(hps_assets["dir"] / "HPS_v2_compressed.pt", tmp_path / "HPS_v2.1_compressed.pt")
    reward = load_reward("hpsv2.1", weights={"hpsv2.1": tmp_path, "clip-vit-h-14-processor": proc}, backend="transformers")
    pix, text = _hf_inputs(proc, images, PROMPTS, padding="max_length")
    torch.testing.assert_close(
        reward.score(images, PROMPTS).raw, _ref_cosines(hps_assets["ref"], pix, text["input_ids"]), atol=1e-5, rtol=1e-4
    )

    other = _tiny_ref(4)
    torch.save({"state_dict": other.state_dict()}, tmp_path / "HPS_v2.1_compressed.pt")
    reward = load_reward("hpsv2.1", weights={"hpsv2.1": tmp_path, "clip-vit-h-14-processor": proc}, backend="transformers")
    torch.testing.assert_close(reward.score(images, PROMPTS).raw, _ref_cosines(other, pix, text["input_ids"]), atol=1e-5, rtol=1e-4)


def test_hps_backend_choice():
    from flowopd.reward_models.hps import open_clip_importable

    with pytest.raises(ValueError, match="backend"):
        load_reward("hpsv2", backend="jax")
    auto = load_reward("hpsv2").resolve_backend()
    assert auto == ("open_clip" if open_clip_importable()[0] else "transformers")
    assert load_reward("hpsv2.1", backend="transformers").resolve_backend() == "transformers"


# ------------------------------------------------------------------ (e) parity with real open_clip


def test_conversion_parity_with_real_open_clip():
    from flowopd.reward_models.hps import config_from_open_clip_state_dict, convert_open_clip_state_dict, open_clip_importable

    ok, why = open_clip_importable()
    if not ok:
        reason = "open_clip cannot import here: torchvision cannot load on this CPU torch build"
        pytest.skip(reason if "torchvision" in (why or "") else f"open_clip cannot import here: {why}")
    import open_clip
    from transformers import CLIPModel

    torch.manual_seed(7)
    oc = open_clip.CLIP(
        embed_dim=64,
        vision_cfg=dict(layers=2, width=160, head_width=80, patch_size=8, image_size=32),
        text_cfg=dict(context_length=CONTEXT, vocab_size=VOCAB_SIZE, width=128, heads=2, layers=2),
    ).eval()
    with torch.no_grad():
        for name, p in oc.named_parameters():
            if not name.endswith("logit_scale"):
                p.add_(torch.randn_like(p) * 0.05)
    sd = oc.state_dict()
    config = config_from_open_clip_state_dict(sd)
    hf = CLIPModel(config).eval()
    hf.load_state_dict(convert_open_clip_state_dict(sd, config), strict=True)
    g = torch.Generator().manual_seed(2)
    pix = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.zeros(2, CONTEXT, dtype=torch.long)
    ids[:, 0], ids[0, 1:6], ids[0, 6], ids[1, 1:30], ids[1, 30] = VOCAB_SIZE - 2, 7, VOCAB_SIZE - 1, 9, VOCAB_SIZE - 1
    with torch.no_grad():
        torch.testing.assert_close(_feat(hf.get_image_features(pixel_values=pix)), oc.encode_image(pix), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(_feat(hf.get_text_features(input_ids=ids)), oc.encode_text(ids), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ (f) missing weights


@pytest.mark.parametrize("name", ["pickscore_v1", "clipscore", "aesthetic_laion_v2", "hpsv2", "hpsv2.1"])
def test_missing_weights_is_one_line_with_the_download_command(name, tmp_path, images):
    from flowopd.reward_models.registry import get_reward_class

    cls = get_reward_class(name)
    reward = load_reward(name, weights={s: tmp_path / "empty" for s in cls.weight_sets})
    with pytest.raises(WeightsMissingError) as err:
        reward.score(images[:1], PROMPTS[:1])
    msg = str(err.value)
    assert "\n" not in msg
    assert f"flowopd weights download {name}" in msg


def test_a_teacher_trains_on_pickscore_with_the_same_trainer(assets, tiny_policy_dir, tmp_path, monkeypatch):
    """The real reward in the one trainer: a GRPO step on tiny PickScore weights found through $FLOWOPD_WEIGHTS_DIR."""
    from test_trainer import tiny_config

    from flowopd.trainer import Trainer

    monkeypatch.setenv("FLOWOPD_WEIGHTS_DIR", str(assets["root"]))
    cfg = tiny_config(tiny_policy_dir, steps=1, rewards={"pickscore_v1": 1.0}, tasks={"preference": 1.0})
    trainer = Trainer(cfg, tmp_path / "run")
    metrics = trainer.train_step()
    assert math.isfinite(metrics["reward/pickscore_v1"]) and metrics["reward_failed"] == 0
    rewards = trainer.objective.last_batch["rewards"]
    assert metrics["reward/pickscore_v1"] == pytest.approx(float(rewards.mean()), abs=1e-5)
    assert rewards.std() > 0 and trainer.objective.last_batch["advantages"].abs().sum() > 0  # distinct images, distinct scores
