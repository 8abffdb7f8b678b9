"""User-facing errors: anything raised as `UserError` ends the CLI with exit code 2 and one line.

Usage: ``raise UserError("unknown baseline 'dyn'; valid: dyt, layernorm (did you mean 'dyt'?)")``
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: the CLI prints ``error: <message>`` on stderr and exits with 2."""


class BaselinePluginError(UserError):
    """A baseline plugin file could not be loaded or registered."""


def did_you_mean(name: str, valid: Iterable[str], what: str) -> str:
    """Return ``unknown <what> 'x'; valid: a, b, c (did you mean 'y'?)``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} '{name}'; valid: {', '.join(valid)}{hint}"
