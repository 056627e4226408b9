"""Cold start (SPEC section 5): peft merges of the teachers' LoRAs, and SFT on the teachers' images."""

import json

import pytest

from flowopd.coldstart import cold_start, delta_weight, merge_teachers, sft_cold_start
from flowopd.errors import FlowOPDError
from flowopd.lora import load_lora, save_lora
from flowopd.models import load_backbone
from flowopd.train_config import TrainConfig

MINI_WEIGHTS = {"compose": 0.4, "text": 0.3, "preference": 0.2, "quality": 0.1}


def mini_cfg(**cold_start) -> TrainConfig:
    return TrainConfig(tasks=dict.fromkeys(MINI_WEIGHTS, 1.0), opd={"cold_start": {"weights": MINI_WEIGHTS, **cold_start}})


def lora_modules(transformer, adapter: str) -> list[str]:
    return [n for n, m in transformer.named_modules() if hasattr(m, "lora_A") and adapter in m.lora_A]


def merged_and_teacher_deltas(folder, cfg: TrainConfig):
    """(module, merged dW, sum_k w_k dW_k) for every adapted module of the shipped mini teachers."""
    backbone = load_backbone("mini-base")
    tr = backbone.transformer
    for spec in cfg.opd.teachers:
        load_lora(tr, spec.lora_folder(), spec.name)
    load_lora(tr, folder, "merged")
    assert lora_modules(tr, "merged") == lora_modules(tr, "compose")  # every module the teachers adapt
    for module in lora_modules(tr, "merged"):
        yield module, delta_weight(tr, "merged", module), sum(MINI_WEIGHTS[t] * delta_weight(tr, t, module) for t in MINI_WEIGHTS)


def test_cat_merge_is_the_exact_weighted_average_of_the_teachers_updates(tmp_path):
    cfg = mini_cfg(merge="cat")
    folder = merge_teachers(cfg, tmp_path / "cat")
    info = json.loads((folder / "lora_info.json").read_text())
    assert info["cold_start"] == {"method": "merge", "merge": "cat", "weights": MINI_WEIGHTS} and info["base"] == "mini-base"
    n = 0
    for module, merged, expected in merged_and_teacher_deltas(folder, cfg):
        # float32 precision: the merged dW differs from sum_k w_k B_k A_k s_k by rounding only (tolerance 1e-6 of its scale)
        assert (merged - expected).abs().max() <= 1e-6 * expected.abs().max() + 1e-9, module
        n += 1
    assert n == 47  # 6 blocks x the 8 attention projections of SPEC section 4, less the last block's to_add_out (context_pre_only)


def test_elementwise_merge_is_not_the_average_of_the_updates(tmp_path):
    cfg = mini_cfg(merge="elementwise")
    folder = merge_teachers(cfg, tmp_path / "elementwise")
    errors = [float((m - e).norm() / e.norm()) for _, m, e in merged_and_teacher_deltas(folder, cfg)]
    # (sum w B)(sum w A) has the cross terms w_j w_k B_j A_k, so it is not sum w_k B_k A_k. The shipped teachers share
    # their initial A (seed 0), which keeps the error moderate: measured 0.26-0.35 relative (float rounding is ~1e-7)
    assert min(errors) > 0.1


@pytest.mark.parametrize("method", ["svd", "ties", "dare_linear"])
def test_the_other_peft_merges_write_a_loadable_lora(tmp_path, method):
    extra = {"svd_rank": 8} if method == "svd" else {}
    cfg = mini_cfg(merge=method, **extra)
    folder = merge_teachers(cfg, tmp_path / method)
    rank = 8 if method == "svd" else 32
    backbone = load_backbone("mini-base")
    load_lora(backbone.transformer, folder, "default")
    layer = dict(backbone.transformer.named_modules())["transformer_blocks.0.attn.to_q"]
    assert layer.lora_A["default"].weight.shape[0] == rank
    if method == "svd":  # the best rank-8 approximation of the exact average: closer to it than zero, not equal
        cat = merge_teachers(mini_cfg(merge="cat"), tmp_path / "cat")
        tr = backbone.transformer
        load_lora(tr, cat, "cat")
        d_svd, d_cat = (
            delta_weight(tr, "default", "transformer_blocks.0.attn.to_q"),
            delta_weight(tr, "cat", "transformer_blocks.0.attn.to_q"),
        )
        assert 0 < (d_svd - d_cat).norm() < d_cat.norm()


def _lora_on(base: str, path, rank: int, targets=("to_q", "to_k", "to_v", "to_out.0"), digest: str | None = "auto"):
    from flowopd.lora import add_lora
    from flowopd.models import model_digest

    backbone = load_backbone(base)
    add_lora(backbone.transformer, rank, 2 * rank, targets)
    info = {"kind": "flowopd-lora", "base": base}
    if digest == "auto":
        info["base_digest"] = model_digest(base)
    save_lora(backbone.transformer, path, info)
    return str(path)


def _narrow_inputs(folder) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "pytorch_lora_weights.safetensors"
    with safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: (v[:, : v.shape[1] // 2].contiguous() if "lora_A" in k else v) for k, v in tensors.items()}, path, metadata=meta)


def two_teacher_cfg(model: str, a: str, b: str, **cold_start) -> TrainConfig:
    teachers = [
        {"name": "compose", "tasks": ["compose"], "reward": "x", "checkpoint": a},
        {"name": "text", "tasks": ["text"], "reward": "x", "checkpoint": b},
    ]
    return TrainConfig(model=model, tasks={"compose": 1, "text": 1}, opd={"teachers": teachers, "anchor": None, "cold_start": cold_start})


def test_merges_of_adapters_with_different_targets_or_ranks_are_refused(tiny_policy_dir, tmp_path):
    base = str(tiny_policy_dir)
    r4 = _lora_on(base, tmp_path / "r4", 4)
    r8 = _lora_on(base, tmp_path / "r8", 8)
    qk = _lora_on(base, tmp_path / "qk", 4, targets=("to_q", "to_k"))
    with pytest.raises(FlowOPDError, match="adapt different modules"):
        merge_teachers(two_teacher_cfg(base, r4, qk, merge="cat"), tmp_path / "x")
    with pytest.raises(FlowOPDError, match="a ties merge needs one rank.*use merge: cat"):
        merge_teachers(two_teacher_cfg(base, r4, r8, merge="ties"), tmp_path / "x")
    folder = merge_teachers(two_teacher_cfg(base, r4, r8, merge="cat"), tmp_path / "ok")  # cat is exact for any ranks
    tr = load_backbone(base).transformer
    load_lora(tr, folder, "merged")
    assert dict(tr.named_modules())["transformer_blocks.0.attn.to_q"].lora_A["merged"].weight.shape[0] == 12
    assert not (tmp_path / "x").exists()


def test_a_teacher_from_another_base_is_refused_before_any_compute(tiny_policy_dir, tmp_path):
    foreign = _lora_on("mini-base", tmp_path / "foreign", 4)  # recorded as trained on mini-base
    ours = _lora_on(str(tiny_policy_dir), tmp_path / "ours", 4)
    with pytest.raises(FlowOPDError, match="trained on another base model"):
        merge_teachers(two_teacher_cfg(str(tiny_policy_dir), ours, foreign), tmp_path / "x")
    unrecorded = _lora_on(str(tiny_policy_dir), tmp_path / "unrecorded", 4, digest=None)  # no base recorded: the shapes decide
    _narrow_inputs(tmp_path / "unrecorded")  # as if trained on a model of half the width
    with pytest.raises(FlowOPDError, match="does not fit this model"):
        merge_teachers(two_teacher_cfg(str(tiny_policy_dir), ours, unrecorded), tmp_path / "x")


def test_sft_trains_a_fresh_lora_on_the_teachers_images(tiny_policy_dir, tiny_teachers, tmp_path):
    teachers = [{"name": t, "tasks": [t], "reward": "x", "checkpoint": str(tiny_teachers[t])} for t in ("compose", "text")]
    sft = {"prompts_per_teacher": 2, "images_per_prompt": 2, "sample_steps": 2, "steps": 3, "batch_size": 4}
    cfg = TrainConfig(
        model=str(tiny_policy_dir),
        tasks={"compose": 1, "text": 1},
        lora={"rank": 4, "alpha": 8},
        opd={"teachers": teachers, "anchor": None, "cold_start": {"method": "sft", "sft": sft}},
    )
    stages = []
    folder = sft_cold_start(cfg, tmp_path / "sft", progress=lambda stage, done, total: stages.append(stage))
    info = json.loads((folder / "lora_info.json").read_text())
    assert info["cold_start"]["method"] == "sft" and info["cold_start"]["images"] == 8 and info["final_loss"] > 0
    assert stages[:2] == ["teacher compose draws", "teacher text draws"]
    from safetensors.torch import load_file

    b = [v for k, v in load_file(folder / "pytorch_lora_weights.safetensors").items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in b)  # B starts at zero: it moved, so the LoRA trained
    load_backbone(str(folder))  # and it loads through the public path
    assert cold_start(cfg, tmp_path / "sft", reuse=True) == tmp_path / "sft"  # kept when resuming


def test_cold_start_from_a_folder_and_none():
    cfg = TrainConfig(opd={"cold_start": {"method": "none"}})
    assert cold_start(cfg, None) is None
    bad = TrainConfig(opd={"cold_start": {"from_lora": "/nonexistent"}})
    with pytest.raises(FlowOPDError, match="is not a LoRA folder"):
        cold_start(bad, None)


def test_a_shipped_teacher_from_an_older_base_is_refused_with_its_rebuild_command(tmp_path, monkeypatch):
    """After the base changes, a shipped artifact still recorded against the old one is refused, naming what rebuilds it."""
    import dataclasses
    import shutil

    from flowopd import models

    stale = tmp_path / "teacher-text"
    shutil.copytree(models.KNOWN_WEIGHTS["mini-teacher-text"].path, stale)
    info = json.loads((stale / "lora_info.json").read_text())
    info["base_digest"] = "0" * 64  # the base it was trained on is gone
    (stale / "lora_info.json").write_text(json.dumps(info))
    monkeypatch.setitem(
        models.KNOWN_WEIGHTS, "mini-teacher-text", dataclasses.replace(models.KNOWN_WEIGHTS["mini-teacher-text"], path=stale)
    )
    with pytest.raises(
        FlowOPDError, match=r"shipped mini-teacher-text .* rebuild it with: flowopd train teacher --config mini/teacher-text"
    ):
        load_backbone("mini-teacher-text")
    with pytest.raises(FlowOPDError, match=r"rebuild it with: flowopd train teacher --config mini/teacher-text"):
        models.check_base(stale, "mini-base")
