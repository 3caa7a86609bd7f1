"""Load a YAML file into a pydantic model, turning every failure into a :class:`ConfigError`.

The error names the file, the dotted field and the reason, e.g.
``jobs/x.yaml: invalid configuration\n  - train.rounds: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from ai4hi_sdk.errors import ConfigError

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


class StrictModel(pydantic.BaseModel):
    """Base of every config schema: unknown keys are errors, values are immutable."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def validate_mapping(data: object, model: type[ModelT], source: str) -> ModelT:
    """Validate an already-parsed mapping; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("<file>", f"expected a mapping at top level, got {type(data).__name__}")])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        problems = [(_field_path(e["loc"]), e["msg"]) for e in err.errors()]
        raise ConfigError(source, problems) from None


def load_yaml_model(path: str | Path, model: type[ModelT]) -> ModelT:
    """Read ``path`` as YAML and validate it as ``model``."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(source, [("<file>", "file not found")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(source, [("<file>", f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                                              f"{err.start}); save the file as UTF-8")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(err, 'problem', err)}")]) from None
    return validate_mapping(data, model, source)
