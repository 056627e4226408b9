"""The mini backbone: save/load through the real classes, tokenizer, LoRA targets, the ODE sampler, eq. 1."""

import json

import numpy as np
import pytest
import torch

from flowopd.backbone import PromptEmbeds
from flowopd.mini import world
from flowopd.mini.model import MAX_TOKENS, TRANSFORMER_CONFIG, MiniBackbone
from flowopd.sampling import sample_ode, sigma_schedule

SD3_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return MiniBackbone.from_pretrained(tiny_model_dir)


def test_round_trip_through_from_pretrained(tiny_model_dir, tiny, tmp_path):
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    assert isinstance(tiny.transformer, SD3Transformer2DModel)
    assert isinstance(tiny.text_encoder, CLIPTextModelWithProjection)
    assert json.loads((tiny_model_dir / "model_info.json").read_text())["kind"] == "mini"
    tiny.save_pretrained(tmp_path / "again")
    again = MiniBackbone.from_pretrained(tmp_path / "again")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        c = tiny.encode_prompts(["a photo of a red square", 'the text "7"'])
        assert torch.equal(
            tiny.velocity(x, torch.tensor(0.5), c),
            again.velocity(x, torch.tensor(0.5), again.encode_prompts(["a photo of a red square", 'the text "7"'])),
        )


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a mini model folder"):
        MiniBackbone.from_pretrained(tmp_path)


def test_config_follows_the_measured_hints():
    assert TRANSFORMER_CONFIG["pos_embed_max_size"] == TRANSFORMER_CONFIG["sample_size"] // TRANSFORMER_CONFIG["patch_size"]
    assert (
        TRANSFORMER_CONFIG["caption_projection_dim"] == TRANSFORMER_CONFIG["num_attention_heads"] * TRANSFORMER_CONFIG["attention_head_dim"]
    )
    fresh = MiniBackbone.random(0)
    assert fresh.transformer.proj_out.weight.abs().sum() == 0  # starts by predicting zero velocity


def test_tokenizer_splits_digits_and_flags_unknown_words(tiny):
    tok = tiny.tokenizer
    ids = tok('the text "4821"').input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["[BOS]", "the", "text", '"', "4", "8", "2", "1", '"', "[EOS]"]
    assert tiny.unknown_words("a photo of a zebra") == ["zebra"]
    assert tiny.unknown_words("Two RED squares") == []
    every_prompt = [r.prompt for t in world.TASKS for r in world.make_prompts(t, 30, seed=0, split="all")]
    assert all(not tiny.unknown_words(p) for p in every_prompt)
    assert max(len(tok(p).input_ids) for p in every_prompt) <= MAX_TOKENS


def test_empty_prompt_is_the_unconditional_branch(tiny):
    with torch.no_grad():
        e = tiny.encode_prompts(["", "a photo of a circle"])
    assert isinstance(e, PromptEmbeds) and e.tokens.shape == (2, MAX_TOKENS, 128) and e.pooled.shape == (2, 128)
    assert not torch.allclose(e.pooled[0], e.pooled[1])


def test_sd35_lora_targets_attach_with_peft(tiny):
    from peft import LoraConfig, get_peft_model_state_dict

    model = MiniBackbone.random(0)
    model.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=SD3_LORA_TARGETS, init_lora_weights="gaussian"), adapter_name="t"
    )
    keys = get_peft_model_state_dict(model.transformer, adapter_name="t")
    for target in SD3_LORA_TARGETS:
        assert any(f".{target}.lora_A" in k for k in keys), target


def test_sigma_schedule_from_diffusers():
    s = sigma_schedule(10)
    assert s.shape == (11,) and s[0] == 1.0 and s[-1] == 0.0 and bool((s[1:] < s[:-1]).all())
    shifted = sigma_schedule(10, shift=3.0)
    assert bool((shifted[1:-1] > s[1:-1]).all())  # shift > 1 spends more steps at high noise
    with pytest.raises(ValueError):
        sigma_schedule(0)


def test_ode_sampler_is_deterministic_and_batch_independent(tiny):
    prompts = ["a photo of a red square", 'the text "12"', "a big blue circle on a gray background"]
    a = sample_ode(tiny, prompts, [1, 2, 3], steps=3, cfg=2.0)
    b = sample_ode(tiny, prompts[1:2], [2], steps=3, cfg=2.0)
    c = sample_ode(tiny, prompts, [1, 2, 3], steps=3, cfg=2.0, batch_size=1)
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a[1:2], b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def test_euler_step_matches_the_flow_convention():
    """With the exact velocity of a single training pair, the ODE lands on x0 (SPEC section 1)."""

    class Oracle:
        latent_shape = (3, 32, 32)
        device = torch.device("cpu")

        def __init__(self, x0, eps):
            self.x0, self.eps = x0, eps

        def encode_prompts(self, prompts):
            return PromptEmbeds(torch.zeros(len(prompts), 1, 1), torch.zeros(len(prompts), 1))

        def velocity(self, x, sigma, cond):
            return self.eps - self.x0

        def decode(self, x):
            return x

    from flowopd.sampling import initial_noise

    eps = initial_noise(1, (3, 32, 32), [5])
    x0 = torch.rand(1, 3, 32, 32)
    out = sample_ode(Oracle(x0, eps), ["p"], [5], steps=7, cfg=1.0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    from flowopd.flow_matching import flow_matching_loss

    images = torch.rand(4, 3, 32, 32)
    gen = torch.Generator().manual_seed(3)
    seen = {}

    class Probe(MiniBackbone):
        def velocity(self, x, sigma, cond):
            seen["x"], seen["sigma"] = x, sigma
            x0 = images * 2 - 1
            s = sigma.view(-1, 1, 1, 1)
            eps = (x - (1 - s) * x0) / s  # recover eps from x_sigma = (1 - s) x0 + s eps
            return eps - x0

    base = MiniBackbone.random(0)
    probe = Probe(base.transformer, base.text_encoder, base.tokenizer)
    loss = flow_matching_loss(probe, images, ["a"] * 4, gen)
    assert loss.item() < 1e-8
    assert bool(((seen["sigma"] > 0) & (seen["sigma"] < 1)).all())


def test_short_pretraining_learns_and_saves(tmp_path):
    from flowopd.flow_matching import flow_matching_loss
    from flowopd.mini.pretrain import PretrainConfig, pretrain, render_batch

    cfg = PretrainConfig(steps=12, batch_size=8, lr=1e-3, warmup=2, save_every=6, seed=0)
    model = pretrain(cfg, tmp_path / "m")
    info = json.loads((tmp_path / "m" / "run.json").read_text())
    assert info["pretrain"]["step"] == 12 and info["config"]["steps"] == 12 and info["versions"]["torch"]
    loaded = MiniBackbone.from_pretrained(tmp_path / "m")
    x, p = render_batch(np.random.default_rng(99), 8, 0.0)
    with torch.no_grad():
        trained = flow_matching_loss(loaded, x, p, torch.Generator().manual_seed(0)).item()
        untrained = flow_matching_loss(MiniBackbone.random(0), x, p, torch.Generator().manual_seed(0)).item()
    assert trained < untrained
    assert not list(tmp_path.glob(".m.*"))  # no temp folders left behind
    assert model is not None


class _Killed(Exception):
    pass


def _kill_at(step_to_die: int):
    def progress(step, loss):
        if step == step_to_die:
            raise _Killed

    return progress


def test_resumed_pretraining_equals_an_uninterrupted_run(tmp_path):
    from flowopd.errors import ConfigError
    from flowopd.mini.pretrain import PretrainConfig, pretrain

    cfg = dict(steps=4, batch_size=4, warmup=1, seed=2, save_every=2)
    straight = pretrain(PretrainConfig(**cfg), tmp_path / "a")
    with pytest.raises(_Killed):  # dies during step 3, after step 2's checkpoint
        pretrain(PretrainConfig(**cfg), tmp_path / "b", progress=_kill_at(3))
    assert json.loads((tmp_path / "b" / "run.json").read_text())["pretrain"]["step"] == 2
    resumed = pretrain(PretrainConfig(**cfg), tmp_path / "b", resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    with pytest.raises(ConfigError, match=r"lr: \S+ in the checkpoint vs 0.01"):
        pretrain(PretrainConfig(**{**cfg, "lr": 1e-2}), tmp_path / "b", resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        pretrain(PretrainConfig(**cfg), tmp_path / "c", resume=True)
    before = (tmp_path / "a" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a pre-trained model; pass --resume"):  # never overwritten without a word
        pretrain(PretrainConfig(**{**cfg, "seed": 3}), tmp_path / "a")
    assert (tmp_path / "a" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_pretraining_can_start_from_a_model_and_mix_tasks(tiny_model_dir, tmp_path):
    from flowopd.config import build_config
    from flowopd.errors import ConfigError
    from flowopd.mini.pretrain import PretrainConfig, pretrain, render_batch

    cfg = PretrainConfig(steps=1, batch_size=2, lr=1e-12, warmup=0, init_from=str(tiny_model_dir), task_mix={"text": 1.0})
    model = pretrain(cfg, tmp_path / "m")
    start = MiniBackbone.from_pretrained(tiny_model_dir)
    for (name, p), q in zip(model.state_dict().items(), start.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    _, prompts = render_batch(np.random.default_rng(0), 20, 0.0, {"text": 1.0})
    assert all(p.startswith("the text") for p in prompts)
    with pytest.raises(ConfigError, match="unknown tasks"):
        build_config(PretrainConfig, {"task_mix": {"painting": 1.0}})


def test_pretraining_compose_tag_mix_draws_only_the_tags_asked_for():
    from flowopd.config import build_config
    from flowopd.errors import ConfigError
    from flowopd.mini import world
    from flowopd.mini.pretrain import PretrainConfig

    rng = np.random.default_rng(3)
    recs = [world.training_record(rng, {"compose": 1.0}, {"position": 3.0, "color_attr": 1.0}) for _ in range(400)]
    tags = [r.metadata["tag"] for r in recs]
    assert set(tags) == {"position", "color_attr"}
    assert 0.65 < tags.count("position") / len(tags) < 0.85  # 3:1
    assert all(not world.is_heldout(r) for r in recs)
    # without a tag mix the draw (and so stage 1 and 2's data) is what it was: every tag, from the same random stream
    for seed in range(20):
        rng = np.random.default_rng(seed)
        rng.choice(4, p=[1.0, 0, 0, 0])  # the task draw
        expected = world.compose_prompt(rng, colour_counts=True)
        if not world.is_heldout(expected):
            got = world.training_record(np.random.default_rng(seed), {"compose": 1.0})
            assert got.metadata == expected.metadata and got.prompt.endswith(expected.prompt.removeprefix("a photo of "))
    with pytest.raises(ConfigError, match="unknown compose tags"):
        build_config(PretrainConfig, {"compose_tags": {"positon": 1.0}})
    with pytest.raises(ConfigError, match="positive sum"):
        build_config(PretrainConfig, {"compose_tags": {"position": 0.0}})
