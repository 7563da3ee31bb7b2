"""Diagnostics: find the first module that produces a non-finite value, and why.

The finder itself lives in ``ur4rec.training.nonfinite`` (the trainer's NaN guard uses it and
training may not import diagnostics); it is re-exported here for notebooks.
"""

from ur4rec.training.nonfinite import NonFiniteReport, find_first_nonfinite

__all__ = ["NonFiniteReport", "find_first_nonfinite"]
