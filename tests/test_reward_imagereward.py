"""ImageReward v1 on tiny random weights in the OFFICIAL checkpoint layout (THUDM/ImageReward's ImageReward.pt).

The test writes its own reference of BLIP's timm-style ViT (``models/vit.py``: cls_token, pos_embed,
patch_embed conv, pre-norm blocks with fused qkv, LayerNorm eps 1e-6, final norm), takes the text-encoder
keys from a tiny ``BlipTextModel`` (BLIP's ``med.py`` BERT names), adds the MLP head and the keys the score
never reads, saves ``ImageReward.pt`` + ``med_config.json`` + a locally built BERT tokenizer, and loads them
through the real reward.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from flowopd.errors import FlowOPDError
from flowopd.reward_models import load_reward
from flowopd.reward_models.weights import WeightsMissingError

torch.set_num_threads(1)

WIDTH, DEPTH, HEADS, PATCH, SIZE = 128, 2, 2, 16, 224  # tiny ViT: head dim 64 as in BLIP's ViT-B/L
TEXT_HIDDEN, TEXT_LAYERS, TEXT_HEADS = 64, 2, 2
MLP_SIZES = (TEXT_HIDDEN, 48, 32, 16, 8, 1)  # the official 768-1024-128-64-16-1 shape, scaled down
MEAN, STD = 0.16717362830052426, 1.0333394966054072
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "on", "the", "sign", "that", "says", "photo", "of", "dog"]
VOCAB += ["blue", "with", '"', "hello", "world", "##s", "big", "small", "and", "in", "park", "at", "night", "!", ",", "."]
EXTRA_KEYS = ("blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias")


# ------------------------------------------------------------------ independent reference of BLIP's ViT


class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)


class RefViT(nn.Module):
    """BLIP ``VisionTransformer.forward``: patches + cls, + pos_embed, blocks, norm (timm key names)."""

    def __init__(self):
        super().__init__()
        self.patch_embed = RefPatchEmbed(WIDTH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, (SIZE // PATCH) ** 2 + 1, WIDTH))
        self.blocks = nn.ModuleList(RefBlock(WIDTH, HEADS) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def randomize(module: nn.Module, seed: int) -> None:
    """Every parameter random (LayerNorm weights near 1), so a swapped or dropped tensor shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


# ------------------------------------------------------------------ the tiny official checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import BlipTextConfig, BlipTextModel

    root = tmp_path_factory.mktemp("imagereward")
    ckpt, tok_dir = root / "ImageReward_v1", root / "bert-tokenizer"
    ckpt.mkdir()
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    vocab_size = len(VOCAB) + 2  # + BLIP's [DEC] and [ENC], as 30522 + 2 = 30524 in the real med_config.json
    med = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TEXT_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": TEXT_HEADS,
        "num_hidden_layers": TEXT_LAYERS,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": WIDTH,  # consistent with the tiny ViT (BLIP_Pretrain sets it to vision_width)
        "add_cross_attention": True,
    }
    (ckpt / "med_config.json").write_text(json.dumps(med))

    vit = RefViT()
    randomize(vit, 0)
    text_cfg = BlipTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        max_position_embeddings=64,
        encoder_hidden_size=WIDTH,
        is_decoder=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
    )
    text = BlipTextModel(text_cfg, add_pooling_layer=False).eval()
    randomize(text, 1)
    mlp = nn.Sequential(
        nn.Linear(MLP_SIZES[0], MLP_SIZES[1]),
        nn.Dropout(0.2),
        nn.Linear(MLP_SIZES[1], MLP_SIZES[2]),
        nn.Dropout(0.2),
        nn.Linear(MLP_SIZES[2], MLP_SIZES[3]),
        nn.Dropout(0.1),
        nn.Linear(MLP_SIZES[3], MLP_SIZES[4]),
        nn.Linear(MLP_SIZES[4], MLP_SIZES[5]),
    ).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))

    sd = {f"blip.visual_encoder.{k}": v.clone() for k, v in vit.state_dict().items()}
    sd.update({f"blip.text_encoder.{k}": v.clone() for k, v in text.state_dict().items()})
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(64).expand(1, -1).clone()  # BLIP's persistent buffer
    sd.update({f"mlp.layers.{k}": v.clone() for k, v in mlp.state_dict().items()})
    sd.update({"blip.vision_proj.weight": torch.randn(16, WIDTH), "blip.vision_proj.bias": torch.zeros(16)})
    sd.update({"blip.text_proj.weight": torch.randn(16, TEXT_HIDDEN), "blip.text_proj.bias": torch.zeros(16)})
    torch.save(sd, ckpt / "ImageReward.pt")
    weights = {"imagereward_v1": ckpt, "bert-base-uncased-tokenizer": tok_dir}
    return {"weights": weights, "vit": vit, "text": text, "mlp": mlp, "sd": sd}


@pytest.fixture(scope="module")
def reward(tiny):
    r = load_reward("imagereward_v1", weights=tiny["weights"])
    r._ensure_loaded()
    return r


def test_converted_vision_equals_the_reference_vit(tiny, reward):
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = reward.vision(pixel_values=pixels).last_hidden_state
        ref = tiny["vit"](pixels)
    assert ours.shape == (2, (SIZE // PATCH) ** 2 + 1, WIDTH)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    cfg = reward.vision.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.layer_norm_eps, cfg.image_size) == (
        WIDTH,
        DEPTH,
        HEADS,
        1e-6,
        SIZE,
    )


def test_every_official_key_is_consumed_or_listed_as_unused(tiny, reward):
    sd = tiny["sd"]
    unused = sorted([*EXTRA_KEYS, "blip.text_encoder.embeddings.position_ids"])
    assert reward.ignored_keys == unused
    assert reward.consumed_keys == len(sd) - len(unused)
    assert reward.text_encoder.config.encoder_hidden_size == WIDTH


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("drop:blip.visual_encoder.blocks.1.attn.proj.bias", "self_attn.projection.bias"),
        ("drop:blip.text_encoder.encoder.layer.0.crossattention.self.key.weight", "crossattention.self.key.weight"),
        ("add:blip.visual_encoder.blocks.0.attn.q_bias", "blip.visual_encoder.blocks.0.attn.q_bias"),
        ("add:blip.some_head.weight", "blip.some_head.weight"),
        ("add:blip.text_encoder.encoder.layer.0.extra.weight", "unexpected blip.text_encoder.encoder.layer.0.extra.weight"),
    ],
)
def test_a_checkpoint_of_another_layout_is_refused_in_one_line(tiny, tmp_path, change, needle):
    import shutil

    op, key = change.split(":")
    sd = dict(tiny["sd"])
    if op == "drop":
        del sd[key]
    else:
        sd[key] = torch.zeros(3)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(sd, ckpt / "ImageReward.pt")
    shutil.copy(tiny["weights"]["imagereward_v1"] / "med_config.json", ckpt)
    r = load_reward("imagereward_v1", weights={**tiny["weights"], "imagereward_v1": ckpt})
    with pytest.raises(FlowOPDError) as err:
        r._ensure_loaded()
    assert "\n" not in str(err.value) and needle in str(err.value)


def test_score_equals_the_official_formula_by_hand(tiny, reward):
    prompts = ["a red cat", 'a sign that says "hello world" in the park at night']
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in prompts]
    scores = reward.score(images, prompts)

    # Tokens by hand: [CLS] words [SEP], padded with [PAD] to 35.
    ids = [VOCAB.index(w) for w in ("[CLS]", "a", "red", "cat", "[SEP]")] + [0] * 30
    tok = reward.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok.input_ids.shape == (2, 35) and tok.input_ids[0].tolist() == ids and tok.attention_mask[0].sum() == 5
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]  # BLIP's init_tokenizer

    # Preprocessing of a 224 px image is only the CLIP normalisation; then the reference ViT.
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in images])
    x = (x - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)) / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(
        3, 1, 1
    )
    with torch.no_grad():
        vision = tiny["vit"](x)
        hidden = tiny["text"](
            input_ids=tok.input_ids,
            attention_mask=tok.attention_mask,
            encoder_hidden_states=vision,
            encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long),
            is_decoder=False,
        ).last_hidden_state
        r = tiny["mlp"](hidden[:, 0, :]).squeeze(-1)
        # The [PAD] positions are masked: the unpadded prompt gives the same [CLS] feature.
        short = tiny["text"](input_ids=torch.tensor([ids[:5]]), encoder_hidden_states=vision[:1], is_decoder=False).last_hidden_state
    torch.testing.assert_close(short[0, 0], hidden[0, 0], atol=1e-5, rtol=1e-5)
    expected = (r - MEAN) / STD
    print(f"\ntiny ImageReward: raw {scores.raw.tolist()} by hand {expected.tolist()}")
    assert r.abs().min() > 1e-3  # a non-trivial head output
    torch.testing.assert_close(scores.raw, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.normalized, scores.raw)  # the training scale is the raw z-score
    assert [d["mlp"] for d in scores.details] == pytest.approx(r.tolist(), abs=1e-5)
    assert [d["truncated"] for d in scores.details] == [False, False]


def test_preprocess_resizes_the_short_side_bicubic_and_centre_crops():
    from flowopd.reward_models.imagereward import preprocess

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)  # H 200, W 300
    out = preprocess(arr, 224)
    # torchvision Resize(224) on PIL: short side 200 -> 224, long side int(224 * 300 / 200) = 336; crop left round(112/2) = 56.
    expected = np.asarray(Image.fromarray(arr).resize((336, 224), Image.BICUBIC), dtype=np.float32)[:, 56:280] / 255
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), (expected - mean) / std, atol=1e-5)
    assert out.shape == (3, 224, 224)


def test_missing_weights_is_a_one_line_error_naming_the_download(tiny, tmp_path):
    r = load_reward("imagereward_v1", weights={**tiny["weights"], "imagereward_v1": tmp_path / "empty"})
    with pytest.raises(WeightsMissingError) as err:
        r.score([Image.new("RGB", (32, 32))], ["a cat"])
    msg = str(err.value)
    assert "\n" not in msg and "flowopd weights download imagereward_v1" in msg and "ImageReward.pt" in msg
