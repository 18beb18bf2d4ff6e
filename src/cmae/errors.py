"""The errors that bad input raises, on the bottom floor with `cmae.config`: every part of the
package may raise them, and this module imports nothing of cmae."""

from __future__ import annotations

import typing
from typing import Any


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


class InputError(ValueError):
    """Unusable input data (a malformed list line, an empty list or image folder); the message
    names the file, and the line where there is one."""


def reject_choice(what: str, value: Any, choices: typing.Iterable[str]) -> typing.NoReturn:
    """The one error for a name outside its choices in a direct library call (masking, targets,
    video backend, protocol); values that come through a config are checked when it loads."""
    raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(map(repr, choices))}")
