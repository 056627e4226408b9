"""An example flowopd reward plugin: colourfulness (Hasler & Suesstrunk, 2003).

Installed with ``pip install examples/reward-plugin``, it shows up in
``flowopd rewards list`` as ``colorfulness`` with source ``flowopd-colorfulness``,
and every command that takes a reward name can use it.
"""

from __future__ import annotations

import numpy as np

from flowopd.reward_models import RewardModel


class Colorfulness(RewardModel):
    """``M = sigma_rgyb + 0.3 * mu_rgyb`` over opponent channels rg = R - G, yb = (R + G) / 2 - B (0-255 scale)."""

    name = "colorfulness"
    version = "1"
    higher_is_better = True
    description = "Hasler-Suesstrunk colourfulness (example plugin); trained at /100"

    def normalize(self, raw):
        return raw.float() / 100.0

    def _score(self, images, prompts, metadata):
        raws, details = [], []
        for img in images:
            rgb = np.asarray(img, dtype=np.float64)
            rg = rgb[..., 0] - rgb[..., 1]
            yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
            sigma = np.hypot(rg.std(), yb.std())
            mu = np.hypot(rg.mean(), yb.mean())
            raws.append(float(sigma + 0.3 * mu))
            details.append({"sigma_rgyb": round(float(sigma), 3), "mu_rgyb": round(float(mu), 3)})
        return raws, details
