"""Plugin options: one pydantic model per plugin, validated, documented and printable from one definition.

A plugin declares ``class Options(saebench.Options)`` with ``Field(default, ge=, le=, description=)``
per option (simonw/llm's ``SharedOptions`` shape); the plugin's base class parses the matrix's keys
into it as ``self.options``. Types are strict: a bool is not an int and "64" is not a number, but an
int is accepted where a float is expected. Unknown keys are refused with the list of valid ones.
``saebench plugins --options NAME`` prints :func:`describe` of a plugin's model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from saebench.errors import ConfigError

OptionsT = TypeVar("OptionsT", bound="Options")


class Options(BaseModel):
    """No options. Subclass it and add fields; each becomes ``self.options.NAME`` on the plugin."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def parse(cls: type[OptionsT], given: Mapping[str, Any], where: str, *, nest: bool = False) -> OptionsT:
        """The options from a mapping (the matrix's keys), or a one-line ConfigError located at ``where``
        (at ``where.OPTION`` with ``nest``: a data source's options are keys of the matrix's ``data``)."""
        try:
            return cls.model_validate(dict(given))
        except ValidationError as exc:
            raise _error(cls, exc, where, nest) from None

    def as_dict(self) -> dict[str, Any]:
        """The parsed values (defaults filled in), as JSON-able data: what cache keys hash."""
        return self.model_dump(mode="json")


def _error(cls: type[Options], exc: ValidationError, where: str, nest: bool) -> ConfigError:
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"]) or "options"
    valid = ", ".join(cls.model_fields) or "none"
    if nest and err["loc"]:
        where = f"{where}.{err['loc'][0]}"
    if err["type"] == "extra_forbidden":
        return ConfigError(f"unknown option {name!r}; valid options: {valid}", where)
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] != "missing":
        message += f", got {type(err['input']).__name__} {err['input']!r}"
    return ConfigError(f"option {name!r}: {message}", where)


def describe(cls: type[Options]) -> list[dict[str, str]]:
    """One row per option: name, type, default, constraints and description (for ``saebench plugins --options``)."""
    rows = []
    for name, field in cls.model_fields.items():
        limits = []
        for item in field.metadata:
            for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
                value = getattr(item, attr, None)
                if value is not None:
                    limits.append(f"{sign} {value}")
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append(
            {
                "name": name,
                "type": _type_name(field.annotation),
                "default": default,
                "constraints": ", ".join(limits),
                "description": field.description or "",
            }
        )
    return rows


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")
