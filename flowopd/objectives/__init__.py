"""Learning signals on top of one rollout and one trainer: GRPO here; OPD and MAR come with distillation."""
