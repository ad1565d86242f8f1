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


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
