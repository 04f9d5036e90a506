"""Errors a user can cause. The CLI prints their message (no traceback) and exits with code 2."""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what is wrong, where, and what to do."""

    exit_code = 2
