"""Errors a user can act on.

A :class:`UserError` carries one line that names the file or value at fault and what to do about
it. The CLI prints it without a traceback and exits with code 2; library callers can catch it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (path, option value, data), not a bug in the package."""

    exit_code = 2
