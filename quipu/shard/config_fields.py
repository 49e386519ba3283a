"""Typed readers for one section of the shard's config file, each error naming its key path.

Strict on purpose: a config file guards a security boundary, so a misspelt key, a string
where a number belongs or `true` where a count belongs is refused rather than read as a
default. Messages name the place (`store.max_segment_bytes`) and the expected type, never
the value found, because a misplaced value can be a secret (a pasted token or key).
"""

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from quipu.core.errors import BadInput

# Every setting name is lower snake case. A key that is not is shown as "<not shown>":
# it is most likely a token or secret pasted one level off, and must not reach a log.
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


def safe_key(key: object) -> str:
    """A key as it may appear in a message: setting names as written, anything else hidden."""
    return f'"{key}"' if isinstance(key, str) and _SETTING_NAME.fullmatch(key) else "<not shown>"


def type_name(value: object) -> str:
    """What a message says was found: the YAML/JSON type, never the value."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


class Fields:
    """One mapping of the config (`where` is its key path). Unknown keys are refused at once.

    Absent means "use the default". `null` means "off" where the key is read with an
    `optional_` reader (e.g. a retention limit) and is an error elsewhere, so that `null`
    never silently stands for a default the operator did not see.
    """

    def __init__(self, obj: object, where: str, allowed: Iterable[str]) -> None:
        if obj is None:
            obj = {}  # an empty or null section is the same as an absent one: all defaults
        if not isinstance(obj, Mapping):
            raise BadInput(f"{where}: expected an object (key: value pairs), got {type_name(obj)}")
        allowed = tuple(allowed)
        for key in obj:
            if key not in allowed:
                raise BadInput(
                    f"{where or 'top level'}: unknown key {safe_key(key)}; expected one of "
                    f"{', '.join(allowed)} (an unknown key is refused, never ignored)"
                )
        self.where = where
        self._obj: Mapping[str, object] = obj

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self._obj.get(key) is not None

    def raw(self, key: str) -> object:
        """The value as parsed (None when absent or null), for a nested section."""
        return self._obj.get(key)

    def _value(self, key: str, default: object, nullable: bool) -> tuple[bool, object]:
        """(found, value): when found is False, `value` is the default (or None for null)."""
        if key not in self._obj:
            if isinstance(default, _Required):
                raise BadInput(f"{self.path(key)}: required key is missing")
            return False, default
        value = self._obj[key]
        if value is None:
            if nullable:
                return False, None
            raise BadInput(f"{self.path(key)}: must not be null; remove the key to use its default")
        return True, value

    def integer(self, key: str, default: "int | _Required" = REQUIRED, *, minimum: int = 1) -> int:
        found, value = self._value(key, default, nullable=False)
        return self._integer(key, value, minimum) if found else value  # type: ignore[return-value]

    def optional_integer(self, key: str, default: int | None, *, minimum: int = 1) -> int | None:
        """An integer, or null for "no limit"."""
        found, value = self._value(key, default, nullable=True)
        return self._integer(key, value, minimum) if found else value  # type: ignore[return-value]

    def _integer(self, key: str, value: object, minimum: int) -> int:
        # bool is a subclass of int in Python: `true` must not read as a count of 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{self.path(key)}: expected an integer, got {type_name(value)}")
        if value < minimum:
            raise BadInput(f"{self.path(key)}: must be at least {minimum}, got {value}")
        return value

    def fraction(self, key: str, default: float) -> float:
        """A number from 0 to 1."""
        found, value = self._value(key, default, nullable=False)
        number = self._number(key, value) if found else default
        if not 0 <= number <= 1:
            raise BadInput(f"{self.path(key)}: must be between 0 and 1, got {number}")
        return number

    def positive(self, key: str, default: "float | _Required" = REQUIRED) -> float:
        """A positive number that cannot be switched off (null is an error)."""
        found, value = self._value(key, default, nullable=False)
        return self._positive(key, value) if found else value  # type: ignore[return-value]

    def optional_positive(self, key: str, default: float | None) -> float | None:
        """A positive number, or null for "never" / "no limit"."""
        found, value = self._value(key, default, nullable=True)
        return self._positive(key, value) if found else value  # type: ignore[return-value]

    def _positive(self, key: str, value: object) -> float:
        number = self._number(key, value)
        if number <= 0:
            raise BadInput(f"{self.path(key)}: must be a positive number, got {number}")
        return number

    def _number(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadInput(f"{self.path(key)}: expected a number, got {type_name(value)}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        found, value = self._value(key, default, nullable=False)
        if found and not isinstance(value, bool):
            raise BadInput(f"{self.path(key)}: expected true or false, got {type_name(value)}")
        return bool(value)

    def text(self, key: str, default: "str | _Required" = REQUIRED) -> str:
        found, value = self._value(key, default, nullable=False)
        return self._text(key, value) if found else value  # type: ignore[return-value]

    def optional_text(self, key: str) -> str | None:
        found, value = self._value(key, None, nullable=True)
        return self._text(key, value) if found else None

    def _text(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise BadInput(f"{self.path(key)}: expected a non-empty string, got {type_name(value)}")
        return value

    def file_path(self, key: str, base: Path) -> Path:
        """A required path; a relative one is taken from `base` (the config file's
        directory), so a config means the same whatever directory the shard started in."""
        return base / self.text(key)

    def optional_file_path(self, key: str, base: Path) -> Path | None:
        text = self.optional_text(key)
        return None if text is None else base / text


def read_named_file(path: Path, where: str) -> bytes:
    """The bytes of a file a key names (a PEM key, a certificate), read at load time so an
    unreadable one stops the process with `where` (the key path) instead of failing later."""
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise BadInput(f"{where}: cannot read {path} ({reason}); check the path and its permissions") from err
