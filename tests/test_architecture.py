"""The house's rules: one registry mechanism, tasks known to the core, worlds and objectives plugged in by name."""

import subprocess
import sys

import pytest

from flowopd.errors import ConfigError
from flowopd.registry import Registry
from flowopd.tasks import TASKS, PromptRecord, Task, get_world, register_task, unknown_tasks_message


def test_a_registry_imports_a_string_entry_only_when_it_is_used(tmp_path, monkeypatch):
    (tmp_path / "lazy_plugin_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", {"eager": 1, "lazy": "lazy_plugin_module:VALUE"})
    assert list(reg) == ["eager", "lazy"] and "lazy" in reg
    assert "lazy_plugin_module" not in sys.modules
    assert reg["lazy"] == 42 and "lazy_plugin_module" in sys.modules
    monkeypatch.delitem(sys.modules, "lazy_plugin_module")


def test_a_taken_name_is_refused_and_an_unknown_one_is_explained():
    reg = Registry("suite", {"geneval": "a:b"})
    reg.register("geneval", "a:b")  # the same entry again is fine
    with pytest.raises(ConfigError, match="suite 'geneval' is already registered"):
        reg.register("geneval", "c:d")
    with pytest.raises(ConfigError, match="unknown suite 'genevl'; did you mean geneval"):
        reg.get_or_explain("genevl")
    with pytest.raises(ConfigError, match="available: geneval, all"):
        reg.get_or_explain("zzz", extra=("all",))


def test_tasks_are_core_and_a_user_task_registers_like_the_four():
    assert list(TASKS)[:4] == ["compose", "text", "preference", "quality"]
    assert "did you mean 'compose'" in unknown_tasks_message({"composee"})
    mine = register_task(Task("counting-hard", "counting to ten", "geneval"))
    try:
        assert unknown_tasks_message({"counting-hard", "text"}) is None
        with pytest.raises(ConfigError, match="already registered"):
            register_task(Task("counting-hard", "something else", "ocr"))
    finally:
        TASKS.remove(mine.name)


def test_a_config_names_tasks_from_the_registry_and_a_mini_model_needs_prompts_for_a_task_its_world_lacks(tmp_path):
    from flowopd.plan_checks import check_inputs
    from flowopd.train_config import TrainConfig

    with pytest.raises(ValueError, match="did you mean 'text'"):
        TrainConfig(tasks={"txt": 1.0})
    register_task(Task("logos", "logo rendering", "ocr"))
    try:
        cfg = TrainConfig(tasks={"logos": 1.0}, rewards={"mini_ocr": 1.0})
        with pytest.raises(ConfigError, match=r"tasks \['logos'\] have no training prompts"):
            check_inputs(cfg)
    finally:
        TASKS.remove("logos")


def test_the_mini_world_is_a_prompt_world_drawing_its_training_split():
    world = get_world("mini")
    assert world.tasks == ("compose", "text", "preference", "quality")
    import numpy as np

    from flowopd.mini.world import in_split

    recs = [world.training_prompt("compose", np.random.default_rng(0)) for _ in range(20)]
    assert all(isinstance(r, PromptRecord) and r.task == "compose" and in_split(r, "train") for r in recs)
    assert len(world.prompts("text", 5, seed=1, split="test")) == 5


def test_importing_the_core_imports_no_world():
    code = (
        "import sys, flowopd.trainer, flowopd.plan_checks, flowopd.benchmarks.suites, flowopd.reward_models;"
        "print(sorted(m for m in sys.modules if m.startswith('flowopd.mini')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_one_image_type_from_the_sampler_to_a_reward(tmp_path):
    """uint8 [B,H,W,3] is the image type on the path: converted once from the sampler's float [B,3,H,W], then passed as it
    is through the score cache to a reward's _score (no CHW round trip, no PIL for mixed sizes)."""
    import numpy as np
    import torch

    from flowopd.benchmarks.score_cache import ScoreCache
    from flowopd.reward_models.base import RewardModel, to_uint8_hwc

    sampled = torch.rand(3, 3, 8, 8)
    hwc = to_uint8_hwc(sampled)
    assert hwc.dtype == np.uint8 and hwc.shape == (3, 8, 8, 3)
    assert np.array_equal(hwc, (sampled.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    assert to_uint8_hwc(hwc) is hwc or np.array_equal(to_uint8_hwc(hwc), hwc)
    ragged = [hwc[0], np.zeros((4, 6, 3), dtype=np.uint8)]
    assert [a.shape for a in to_uint8_hwc(ragged)] == [(8, 8, 3), (4, 6, 3)]
    with pytest.raises(ValueError, match=r"uint8 \[B,H,W,3\]"):
        to_uint8_hwc(hwc.astype(np.float32))

    seen = []

    class Recorder(RewardModel):
        name, version = "recorder", "1"

        def _score(self, images, prompts, metadata):
            seen.extend(images)
            return [float(a.mean()) for a in images], [{} for _ in images]

    cache = ScoreCache(tmp_path / "scores.sqlite")
    cache.score(Recorder(), hwc, ["a", "b", "c"])
    cache.score(Recorder(), ragged, ["x", "y"])
    cache.close()
    assert all(np.array_equal(a, b) for a, b in zip(seen, [*hwc, *ragged]))


def test_an_objective_without_its_signal_and_loss_cannot_be_built():
    from flowopd.objectives.base import Objective

    class Half(Objective):
        name = "half"

        def signal(self, batch):
            return None

    with pytest.raises(TypeError, match="piece_loss"):
        Half(trainer=None)
