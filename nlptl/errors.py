"""The two kinds of failure a user sees: a usage error (exit 2) and a runtime failure (exit 1).

Both carry one line that names the problem and the fix; the CLI prints it without a traceback
(`NLPTL_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import difflib


class NlptlError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1


class UsageError(NlptlError):
    """A mistake on the command line or in a config file (exit code 2)."""

    exit_code = 2


class Interrupted(NlptlError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): a checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close. A choice the word begins
    (warmup -> warmup_ratio) comes before one that merely looks alike (head_warmup)."""
    choices = list(choices)
    started = sorted((c for c in choices if c.startswith(word) and c != word), key=len)
    close = started[:1] or difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
