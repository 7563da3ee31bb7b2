"""One error type for everything a user can get wrong.

Every message says *what* is wrong, *where* (file, key, line), and *how to fix it*, so that the
CLI can print it without a traceback and a notebook shows it as one readable line.
"""

from __future__ import annotations


class UR4RecError(Exception):
    """A problem with the user's input or environment (not a bug in the workbench)."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        parts = [what]
        if where:
            parts.append(f"Where: {where}.")
        if fix:
            parts.append(f"How to fix: {fix}")
        super().__init__(" ".join(parts))


class ConfigError(UR4RecError):
    """A config file or override is missing, malformed or invalid."""


class DataError(UR4RecError):
    """A dataset is missing, truncated, corrupt, or filtered down to nothing."""
