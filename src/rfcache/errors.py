"""The project's error type: every expected failure (bad input, mismatch) raises a subclass.

Messages are one line naming the file or field and what was expected; the CLI prints them
without a traceback and exits with code 2. This module imports nothing, so every subpackage
may depend on it.
"""

from __future__ import annotations

__all__ = ["RfcacheError"]


class RfcacheError(Exception):
    """An expected failure with a one-line, user-facing message."""
