"""Reading config documents: JSON or YAML, with errors that name the place.

Both the sidecar config and the runner config are plain documents validated
by their models (:mod:`.runner.modeling`); this module only turns a file into
a mapping and a validation error into one readable message per field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .runner.modeling import ValidationError

__all__ = ["ConfigError", "describe_validation_error", "load_document"]


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


def load_document(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (JSON is YAML, but its errors read better)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        if file.suffix == ".json":
            raise ConfigError(f"{file}: not valid JSON: {exc}") from exc
        data = _load_yaml(file, text)
    except RecursionError as exc:
        # A document nested thousands deep.
        raise ConfigError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the document must be a mapping, got {type(data).__name__}")
    return data


def _load_yaml(file: Path, text: str) -> Any:
    # Imported on first use: a document that is JSON (JSON is YAML) never
    # needs the parser, and an idle sidecar is the smaller for it.
    import yaml

    try:
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc


def describe_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = [f"{source} is invalid:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)
