"""The reward-model registry (a :class:`flowopd.registry.Registry`): built-ins as lazy ``"module:Class"`` entries,
decorators, and plugins.

Third-party packages add reward models through the ``flowopd.reward_models``
entry-point group; the entry's value is ``"module:Class"`` and the class is
imported only when the reward is used or listed. Name collisions are errors
for built-ins and decorated classes; a plugin that reuses a taken name is
skipped and reported by ``flowopd rewards list``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flowopd.errors import FlowOPDError
from flowopd.registry import Registry
from flowopd.reward_models.base import RewardModel

ENTRY_POINT_GROUP = "flowopd.reward_models"

# name -> "module:Class"; imported on first use.
BUILTIN: dict[str, str] = {
    "mini_geneval": "flowopd.mini.rewards:MiniGenEval",
    "mini_geneval@strict": "flowopd.mini.rewards:MiniGenEvalStrict",
    "mini_ocr": "flowopd.mini.rewards:MiniOCR",
    "mini_preference": "flowopd.mini.rewards:MiniPreference",
    "mini_quality": "flowopd.mini.rewards:MiniQuality",
    "geneval": "flowopd.reward_models.geneval_mmdet:GenEvalMMDet",
    "geneval@hf-m2f": "flowopd.reward_models.geneval:GenEvalHFMask2Former",
    "ocr": "flowopd.reward_models.ocr:RapidOCRReward",
    "ocr@paddle": "flowopd.reward_models.ocr:PaddleOCRReward",
    "pickscore_v1": "flowopd.reward_models.clip_rewards:PickScore",
    "clipscore": "flowopd.reward_models.clip_rewards:CLIPScore",
    "clipscore@vit-b-32": "flowopd.reward_models.clip_rewards:CLIPScoreViTB32",
    "t2i_blip_vqa": "flowopd.reward_models.t2i_blip_vqa:BlipVQA",
    "t2i_blip_vqa@np-rules": "flowopd.reward_models.t2i_blip_vqa:BlipVQARules",
    "t2i_spatial@owlv2": "flowopd.reward_models.t2i_compbench:T2ISpatialOWLv2",
    "t2i_3d_spatial@owlv2-dpt": "flowopd.reward_models.t2i_compbench:T2I3DSpatialOWLv2DPT",
    "t2i_numeracy@owlv2": "flowopd.reward_models.t2i_compbench:T2INumeracyOWLv2",
    "t2i_complex@owlv2": "flowopd.reward_models.t2i_compbench:T2IComplexOWLv2",
    "aesthetic_laion_v2": "flowopd.reward_models.clip_rewards:AestheticLaionV2",
    "hpsv2": "flowopd.reward_models.hps:HPSv2",
    "hpsv2.1": "flowopd.reward_models.hps:HPSv21",
    "imagereward_v1": "flowopd.reward_models.imagereward:ImageRewardV1",
    "deqa": "flowopd.reward_models.deqa:DeQA",
    "geneval2_soft_tifa": "flowopd.reward_models.geneval2:GenEval2SoftTIFA",
    "dpg_vqa@served-vlm": "flowopd.reward_models.dpg_bench:DPGServedVQA",
    "oneig_alignment": "flowopd.reward_models.oneig:OneIGAlignment",
    "oneig_text": "flowopd.reward_models.oneig:OneIGText",
    "unifiedreward": "flowopd.reward_models.judges:UnifiedReward",
    "qwenvl_judge": "flowopd.reward_models.judges:QwenVLJudge",
}


class UnknownRewardError(FlowOPDError, KeyError):
    """An unknown reward name (the message carries the close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass
class RewardInfo:
    """What ``flowopd rewards list`` shows for one reward."""

    name: str
    version: str | None
    source: str
    available: bool
    reason: str | None
    higher_is_better: bool | None
    description: str
    weight_sets: list[str] = dataclasses.field(default_factory=list)


def _check_class(name: str, cls: Any) -> type[RewardModel]:
    if not (isinstance(cls, type) and issubclass(cls, RewardModel)):
        raise FlowOPDError(f"reward {name!r} must be a subclass of flowopd.reward_models.RewardModel, got {cls!r}")
    if cls.name and cls.name != name:
        raise FlowOPDError(f"reward class {cls.__qualname__} is named {cls.name!r} but registered as {name!r}")
    if not cls.name:  # errors and cache keys name the reward
        cls.name = name
    return cls


REWARDS: Registry[type[RewardModel]] = Registry(
    "reward",
    BUILTIN,
    error=UnknownRewardError,
    entry_point_group=ENTRY_POINT_GROUP,
    check=_check_class,
    quote_names=True,
    unknown_hint="see `flowopd rewards list`",
)


def register_reward(name: str, source: str = "builtin"):
    """Class decorator: ``@register_reward("my_reward")`` registers a RewardModel subclass under ``name``."""

    def wrap(cls: type[RewardModel]) -> type[RewardModel]:
        _check_class(name, cls)
        try:
            REWARDS.register(name, cls, source)
        except UnknownRewardError as exc:  # a taken name is a plain error, not an unknown one
            raise FlowOPDError(str(exc)) from None
        return cls

    return wrap


def names() -> list[str]:
    """Every registered reward name, sorted."""
    return sorted(REWARDS)


def get_reward_class(name: str) -> type[RewardModel]:
    """The class registered under ``name``; an unknown name is answered with close matches.

    ``remote:NAME``, or ``NAME`` while ``$FLOWOPD_<NAME>_URL`` names a ``flowopd rewards serve`` server, is the
    class of a client of that server (:mod:`flowopd.reward_models.remote`), with the same interface.
    """
    from flowopd.reward_models import remote

    if name.startswith(remote.REMOTE_PREFIX):
        target = name[len(remote.REMOTE_PREFIX) :]
        try:  # the local class, when this install has one: its version is the one the server must serve
            local = REWARDS[target] if target in REWARDS else None
        except Exception:  # a plugin installed only where the server runs
            local = None
        return remote.remote_class(target, local)
    cls = REWARDS.get_or_explain(name)
    return remote.remote_class(name, cls) if remote.served_url(name, cls) else cls


def load_reward(name: str, **kwargs: Any) -> RewardModel:
    """An instance of the reward ``name`` (weights still load lazily, on the first score); a failing constructor is named."""
    cls = get_reward_class(name)
    if name.startswith("remote:"):  # its constructor is ours, and its errors say what they mean
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except FlowOPDError:
        raise
    except Exception as exc:
        if source_of(name) == "builtin":  # ours raise what they mean (a ValueError for a bad argument)
            raise
        raise FlowOPDError(f"reward {name!r} (from {source_of(name)}) failed to start: {type(exc).__name__}: {exc}") from exc


def source_of(name: str) -> str:
    return REWARDS.source(name)


def list_rewards() -> list[RewardInfo]:
    """Every reward with its source and whether its weights are present; nothing is loaded."""
    out = []
    for name in sorted(REWARDS):
        source = REWARDS.source(name)
        try:
            cls = get_reward_class(name)
            available, reason = cls.weights_status()
            if getattr(cls, "target", None) and available:  # served ($FLOWOPD_<NAME>_URL): the server's version and URL
                version, description, why = cls.listing()
                out.append(RewardInfo(name, version, source, why is None, why, cls.higher_is_better, description))
                continue
            if source != "builtin" and available:  # a plugin's constructor may fail where its weights do not
                load_reward(name)
            out.append(
                RewardInfo(name, cls.version, source, available, reason, cls.higher_is_better, cls.description, list(cls.weight_sets))
            )
        except FlowOPDError as exc:  # a broken plugin must not hide the others
            out.append(RewardInfo(name, None, source, False, str(exc), None, ""))
        except Exception as exc:
            out.append(RewardInfo(name, None, source, False, f"cannot import {REWARDS.target(name)}: {exc}", None, ""))
    return out
