"""flowopd: align text-to-image flow-matching models to many rewards (GRPO teachers, multi-teacher on-policy distillation).

Kept light on purpose: importing ``flowopd`` loads no torch, so ``flowopd --help`` stays instant.
Sub-packages: ``flowopd.reward_models`` (the one scoring interface), ``flowopd.benchmarks``,
``flowopd.teachers``, ``flowopd.cli``, and the mini world (``mini/``, which plugs into the core by registry entries).
"""
