"""The score cache: hits on a second run, misses only for what changed, failed scores retried, several processes at once."""

import math
import multiprocessing

import pytest
import torch

from flowopd.benchmarks.score_cache import ScoreCache
from flowopd.reward_models import RewardModel, load_reward, register_reward

CALLS: list[int] = []


@register_reward("test_counted")
class Counted(RewardModel):
    """Mean brightness x prompt length; records how many images it really scored; fails prompts containing 'fail'."""

    version = "1"

    def _score(self, images, prompts, metadata):
        CALLS.append(len(images))
        raws = [None if "fail" in p else float(img.mean()) * len(p) for img, p in zip(images, prompts)]
        return raws, [{"error": "no"} if r is None else {"n": len(p)} for r, p in zip(raws, prompts)]


def test_second_run_recomputes_nothing_and_matches(tmp_path):
    CALLS.clear()
    images = torch.rand(6, 3, 8, 8)
    prompts = ["a", "bb", "ccc", "a", "bb", "fail"]
    reward = load_reward("test_counted")
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        first = cache.score(reward, images, prompts)
        assert (cache.hits, cache.misses) == (0, 6) and sum(CALLS) == 6
    direct = reward.score(images, prompts)
    assert torch.allclose(first.raw[:5], direct.raw[:5]) and math.isnan(first.raw[5])
    CALLS.clear()
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        second = cache.score(reward, images, prompts)
        assert (cache.hits, cache.misses) == (5, 1) and CALLS == [1]  # only the failed one is retried
        assert torch.allclose(second.raw[:5], first.raw[:5]) and second.details[:5] == first.details[:5]
        assert len(cache) == 5


def test_prompt_metadata_version_and_pixels_are_part_of_the_key(tmp_path, monkeypatch):
    CALLS.clear()
    images = torch.rand(2, 3, 8, 8)
    reward = load_reward("test_counted")
    with ScoreCache(tmp_path / "s.sqlite") as cache:
        cache.score(reward, images, ["x", "x"], [{"tag": "a"}, {"tag": "a"}])
        cache.score(reward, images, ["x", "x"], [{"tag": "a"}, {"tag": "b"}])  # metadata changed for image 2
        cache.score(reward, images, ["x", "y"], [{"tag": "a"}, {"tag": "b"}])  # prompt changed for image 2
        changed = images.clone()
        changed[0, 0, 0, 0] = 1 - changed[0, 0, 0, 0]
        cache.score(reward, changed, ["x", "y"], [{"tag": "a"}, {"tag": "b"}])  # one pixel of image 1
        monkeypatch.setattr(Counted, "version", "2")
        cache.score(reward, images, ["x", "x"], [{"tag": "a"}, {"tag": "a"}])  # a new version rescored
        assert CALLS == [2, 1, 1, 1, 2] and cache.hits == 3


def test_served_judges_key_on_the_served_model():
    judge = load_reward("unifiedreward", base_url="http://127.0.0.1:9/v1", model="CodeGoat24/UnifiedReward-7b-v1.5")
    assert judge.identity() == "served:CodeGoat24/UnifiedReward-7b-v1.5"
    assert load_reward("mini_ocr").identity() == ""


def _worker(path, offset, queue):
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(offset))
    with ScoreCache(path) as cache:
        cache.score(load_reward("mini_quality"), images, ["p"] * 8)
    queue.put(offset)


def test_several_processes_share_one_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, k, queue)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert sorted(queue.get(timeout=5) for _ in procs) == [0, 1, 2]
    with ScoreCache(path) as cache:
        assert len(cache) == 24


@pytest.mark.parametrize("ragged", [False, True])
def test_pil_inputs_of_mixed_sizes(tmp_path, ragged):
    from PIL import Image

    sizes = [(8, 8), (12, 6)] if ragged else [(8, 8), (8, 8)]
    pil = [Image.new("RGB", s, (10 * k, 20, 30)) for k, s in enumerate(sizes)]
    reward = load_reward("test_counted")
    with ScoreCache(tmp_path / "p.sqlite") as cache:
        a = cache.score(reward, pil, ["ab", "ab"])
        b = cache.score(reward, pil, ["ab", "ab"])
        assert cache.hits == 2 and torch.equal(a.raw, b.raw) and torch.allclose(a.raw, reward.score(pil, ["ab", "ab"]).raw)


def _open_and_put(args):
    path, k, barrier = args
    from flowopd.benchmarks.score_cache import ScoreCache

    barrier.wait()  # every process opens the new file at the same moment
    with ScoreCache(path) as cache:
        cache.put([(f"img{k}-{i}", "ctx", float(i), {}) for i in range(20)], "r", "1", "")
    return k


def test_processes_opening_a_new_cache_at_once_never_see_database_is_locked(tmp_path):
    """Switching a fresh file to WAL needs it alone; a second process arriving then got "database is locked" (a 2-process
    eval failed so once). Eight processes now open, create and write the same new file together."""
    import multiprocessing as mp

    from flowopd.benchmarks.score_cache import ScoreCache

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(8) as pool:
        for attempt in range(6):
            path, barrier = tmp_path / f"c{attempt}.sqlite", manager.Barrier(8)
            assert sorted(pool.map(_open_and_put, [(path, k, barrier) for k in range(8)], chunksize=1)) == list(range(8))
            with ScoreCache(path) as cache:
                assert len(cache) == 8 * 20
