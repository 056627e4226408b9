"""Configs: pydantic models loaded from YAML with CLI overrides; a bad key or value fails before any model loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from flowopd.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


def env_var_name(prefix: str, name: str) -> str:
    """A setting's environment variable: ``prefix`` + ``name`` upper-cased, other characters as ``_`` (``hpsv2.1`` -> ``HPSV2_1``)."""
    return prefix + re.sub(r"[^A-Z0-9]", "_", name.upper())


def _describe(err: dict[str, Any], model: type[BaseModel], source: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"unknown config key {key!r} in {source}; allowed keys: {allowed}"
    field = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
    hint = f" ({field.description})" if field is not None and field.description else ""
    return f"bad config value {key}={err.get('input')!r} in {source}: {err['msg']}{hint}"


def build_config(model: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Validate ``values`` into ``model``; the first problem becomes a one-line :class:`ConfigError`."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], model, source)) from None


def load_config(model: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """YAML file (optional) + non-None CLI overrides -> a validated config."""
    import yaml

    values: dict[str, Any] = {}
    source = "command-line options"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file (see configs/)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the file's syntax") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping of key: value")
        values.update(loaded)
        source = str(path)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(model, values, source)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from flowopd.runinfo import atomic_file

    with atomic_file(path, "w") as f:
        yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
