"""The reward-model registry: built-ins as lazy ``"module:Class"`` entries, decorators, and plugins.

Third-party packages add reward models through the ``flowopd.reward_models``
entry-point group; the entry's value is ``"module:Class"`` and the class is
imported only when the reward is used or listed. Name collisions are errors
for built-ins and decorated classes; a plugin that reuses a taken name is
skipped and reported by ``flowopd rewards list``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import warnings
from importlib import metadata as importlib_metadata
from typing import Any

from flowopd.errors import FlowOPDError, PluginWarning
from flowopd.reward_models.base import RewardModel

ENTRY_POINT_GROUP = "flowopd.reward_models"

# name -> "module:Class"; imported on first use.
BUILTIN: dict[str, str] = {
    "mini_geneval": "flowopd.mini.rewards:MiniGenEval",
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
    "aesthetic_laion_v2": "flowopd.reward_models.clip_rewards:AestheticLaionV2",
    "hpsv2": "flowopd.reward_models.hps:HPSv2",
    "hpsv2.1": "flowopd.reward_models.hps:HPSv21",
    "imagereward_v1": "flowopd.reward_models.imagereward:ImageRewardV1",
    "deqa": "flowopd.reward_models.deqa:DeQA",
    "unifiedreward": "flowopd.reward_models.judges:UnifiedReward",
    "qwenvl_judge": "flowopd.reward_models.judges:QwenVLJudge",
}


class UnknownRewardError(FlowOPDError, KeyError):
    """An unknown reward name (the message carries the close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass
class Entry:
    name: str
    target: str | type[RewardModel]  # "module:Class" until resolved
    source: str  # "builtin" or the plugin's distribution name

    def resolve(self) -> type[RewardModel]:
        if isinstance(self.target, str):
            module_name, _, attr = self.target.partition(":")
            if not attr:
                raise FlowOPDError(f"reward {self.name!r}: entry {self.target!r} is not 'module:Class'")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            _check_class(self.name, obj)
            if not obj.name:  # as register_reward does: errors and cache keys name the reward
                obj.name = self.name
            self.target = obj
        return self.target


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


_entries: dict[str, Entry] = {name: Entry(name, target, "builtin") for name, target in BUILTIN.items()}
_plugins_loaded = False
plugin_errors: list[str] = []


def _check_class(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, RewardModel)):
        raise FlowOPDError(f"reward {name!r} must be a subclass of flowopd.reward_models.RewardModel, got {cls!r}")
    if cls.name and cls.name != name:
        raise FlowOPDError(f"reward class {cls.__qualname__} is named {cls.name!r} but registered as {name!r}")


def register_reward(name: str, source: str = "builtin"):
    """Class decorator: ``@register_reward("my_reward")`` registers a RewardModel subclass under ``name``."""

    def wrap(cls: type[RewardModel]) -> type[RewardModel]:
        _check_class(name, cls)
        if not cls.name:
            cls.name = name
        existing = _entries.get(name)
        if existing is not None:
            same = existing.target is cls or existing.target == f"{cls.__module__}:{cls.__qualname__}"
            if not same:
                raise FlowOPDError(f"reward name {name!r} is already registered (by {existing.source}); choose another name")
        _entries[name] = Entry(name, cls, existing.source if existing else source)
        return cls

    return wrap


def load_plugins(force: bool = False) -> None:
    """Register the reward models that installed distributions declare in the entry-point group."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        existing = _entries.get(ep.name)
        if existing is not None:
            if existing.source != dist:
                msg = f"plugin {dist} declares reward {ep.name!r}, already registered by {existing.source}; skipped (rename it in {dist})"
                if msg not in plugin_errors:
                    plugin_errors.append(msg)
                    warnings.warn(msg, PluginWarning, stacklevel=2)
            continue
        _entries[ep.name] = Entry(ep.name, ep.value, dist)


def names() -> list[str]:
    """Every registered reward name, sorted."""
    load_plugins()
    return sorted(_entries)


def get_reward_class(name: str) -> type[RewardModel]:
    """The class registered under ``name``; an unknown name is answered with close matches."""
    load_plugins()
    entry = _entries.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `flowopd rewards list`"
        raise UnknownRewardError(f"unknown reward {name!r}; {hint}")
    return entry.resolve()


def load_reward(name: str, **kwargs: Any) -> RewardModel:
    """An instance of the reward ``name`` (weights still load lazily, on the first score); a failing constructor is named."""
    cls = get_reward_class(name)
    try:
        return cls(**kwargs)
    except FlowOPDError:
        raise
    except Exception as exc:
        if source_of(name) == "builtin":  # ours raise what they mean (a ValueError for a bad argument)
            raise
        raise FlowOPDError(f"reward {name!r} (from {source_of(name)}) failed to start: {type(exc).__name__}: {exc}") from exc


def source_of(name: str) -> str:
    load_plugins()
    return _entries[name].source


def list_rewards() -> list[RewardInfo]:
    """Every reward with its source and whether its weights are present; nothing is loaded."""
    load_plugins()
    out = []
    for name in sorted(_entries):
        entry = _entries[name]
        try:
            cls = entry.resolve()
            available, reason = cls.weights_status()
            if entry.source != "builtin" and available:  # a plugin's constructor may fail where its weights do not
                load_reward(name)
            out.append(
                RewardInfo(name, cls.version, entry.source, available, reason, cls.higher_is_better, cls.description, list(cls.weight_sets))
            )
        except FlowOPDError as exc:  # a broken plugin must not hide the others
            out.append(RewardInfo(name, None, entry.source, False, str(exc), None, ""))
        except Exception as exc:
            out.append(RewardInfo(name, None, entry.source, False, f"cannot import {entry.target}: {exc}", None, ""))
    return out
