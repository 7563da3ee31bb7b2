"""Diagnostics: find the first module that produces a non-finite value, and why."""

from ur4rec.diagnostics.hooks import NonFiniteReport, find_first_nonfinite

__all__ = ["NonFiniteReport", "find_first_nonfinite"]
