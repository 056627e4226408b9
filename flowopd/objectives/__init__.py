"""Objectives: the learning signals over the one rollout and the one trainer (GRPO, OPD), behind one interface (``base``)."""
