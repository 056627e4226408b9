"""The one scoring interface shared by GRPO, OPD and the evaluation suites.

>>> from flowopd.reward_models import load_reward
>>> reward = load_reward("mini_ocr")
>>> scores = reward.score(images, prompts)   # images: [B,3,H,W] in [0,1] or PIL
>>> scores.raw, scores.normalized, scores.details
"""

from flowopd.reward_models.base import RewardModel, Scores, to_uint8_hwc
from flowopd.reward_models.registry import (
    ENTRY_POINT_GROUP,
    UnknownRewardError,
    get_reward_class,
    list_rewards,
    load_reward,
    names,
    register_reward,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "RewardModel",
    "Scores",
    "UnknownRewardError",
    "get_reward_class",
    "list_rewards",
    "load_reward",
    "names",
    "register_reward",
    "to_uint8_hwc",
]
