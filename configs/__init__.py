"""YAML recipes, shipped as package data so `--config mini/teacher-text` works from any install."""
