"""The sampling protocol of an evaluation, recorded with every suite's results and locked in the reports.

Numbers sampled with other steps, CFG, schedule (shift, spacing, terminal
stretch), resolution, negative prompt, images per prompt, seed rule or reward
versions are not the same measurement (Flow-GRPO
#9 and #17, OneIG #6). Each suite's summary carries its ``protocol``: those
settings, whether they are the suite's official ones for the model's world
(``official``) and, if not, how they differ (``deviations``). ``flowopd
report`` refuses to put runs sampled with different protocols in one table
unless ``--allow-mixed-protocols`` is given, and then prints the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowopd.errors import InputError

SAMPLER = "ode-euler"
SEED_RULE = "sha256(seed|index|prompt)[:8]"  # benchmarks.suites.image_seed
LOCKED = (
    "sampler", "steps", "cfg", "shift", "spacing", "shift_terminal", "resolution", "negative_prompt", "images_per_prompt",
    "seed_rule", "reward_versions",
)  # fmt: skip
SAMPLING = ("steps", "cfg", "shift", "spacing", "shift_terminal", "resolution", "negative_prompt")
# what a sampling or protocol without the key means (SD3's, the mini's, and every protocol recorded before the key)
UNSET = {"spacing": "sd3", "shift_terminal": None}


def _get(settings: dict[str, Any], key: str) -> Any:
    return settings.get(key, UNSET.get(key))


def suite_protocol(
    sampling: dict[str, Any],
    official_sampling: dict[str, Any],
    images_per_prompt: int,
    official_images: int,
    seed: int,
    rewards: Sequence[str],
) -> dict[str, Any]:
    """A suite's protocol as run, against the official one (the model's default sampling and the suite's images)."""
    from flowopd.reward_models import get_reward_class

    proto: dict[str, Any] = {"sampler": SAMPLER, **{k: _get(sampling, k) for k in SAMPLING}}
    proto.update(images_per_prompt=images_per_prompt, seed_rule=SEED_RULE, seed=seed)
    proto["reward_versions"] = {name: get_reward_class(name).version for name in rewards}
    official = {**{k: _get(official_sampling, k) for k in SAMPLING}, "negative_prompt": "", "images_per_prompt": official_images}
    proto["deviations"] = [f"{k} {proto[k]!r} (official {v!r})" for k, v in official.items() if proto[k] != v]
    proto["official"] = not proto["deviations"]
    return proto


def protocol_of(summary: dict[str, Any], suite: str) -> dict[str, Any]:
    """The recorded protocol of ``suite`` in an evaluation summary; older summaries' from their sampling and counts
    (``official`` unknown: None)."""
    s = (summary.get("suites") or {}).get(suite) or {}
    if "protocol" in s:
        return s["protocol"]
    sampling = s.get("sampling") or {}
    images = round(s["n_images"] / s["n_prompts"]) if s.get("n_images") and s.get("n_prompts") else None
    proto = {"sampler": SAMPLER, **{k: _get(sampling, k) for k in SAMPLING}, "images_per_prompt": images, "seed_rule": SEED_RULE}
    return {**proto, "reward_versions": None, "official": None, "deviations": []}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The locked settings on which two protocols differ (unknown reward versions are not a difference)."""
    out = []
    for key in LOCKED:
        x, y = _get(a, key), _get(b, key)
        if key == "reward_versions" and (x is None or y is None):
            continue
        if x != y:
            out.append(f"{key} {x!r} vs {y!r}")
    return out


def check_protocols(runs: Sequence[Any], allow_mixed: bool = False) -> list[str]:
    """Notes for the report: runs off their suite's official protocol, and (with ``allow_mixed``) runs whose protocols
    differ on a suite; without it, such runs are refused in one line."""
    notes = []
    suites = dict.fromkeys(s for r in runs for s in (r.summary.get("suites") or {}))
    for suite in suites:
        having = [r for r in runs if suite in (r.summary.get("suites") or {})]
        for r in having:
            proto = protocol_of(r.summary, suite)
            if proto.get("official") is False:
                notes.append(f"{r.label} sampled {suite} off its official protocol: {'; '.join(proto['deviations'])}")
        first = having[0] if having else None
        for r in having[1:]:
            diff = differences(protocol_of(first.summary, suite), protocol_of(r.summary, suite))
            if not diff:
                continue
            said = f"{first.label} and {r.label} sampled {suite} with different protocols ({'; '.join(diff)})"
            if not allow_mixed:
                raise InputError(f"{said}; their numbers are not comparable: evaluate them alike, or pass --allow-mixed-protocols")
            notes.append(f"mixed protocols: {said}")
    return notes
