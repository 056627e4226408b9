"""The mini world: 32x32 images, a procedural renderer, deterministic scorers and a tiny SD3 base (docs/mini-world.md)."""
