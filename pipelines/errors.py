"""Exceptions the library raises for bad input (the CLI turns them into exit code 2)."""

from __future__ import annotations

import importlib.util
import warnings


class InputError(ValueError):
    """Bad user input or environment: the message names the problem and, where possible, the fix.

    Keep the message to one line; the CLI prints it as ``error: <message>``.
    """


def path_error(path: object, problem: str, fix: str) -> InputError:
    """``InputError("<path>: <problem>; <fix>")``: the one-line message for a bad input file."""
    return InputError(f"{path}: {problem}; {fix}")


class MissingWeightsError(InputError):
    """A model artifact is not available locally; the message says how to fetch it."""


class Note(UserWarning):
    """Something the user should know that is not an error (an input was adjusted, a slower path
    was taken). The CLI prints it as one line ``note: <message>``; library users see a warning.
    """


def note(message: str) -> None:
    """Emit ``message`` as a :class:`Note` (one line; shown once per call site and message)."""
    warnings.warn(" ".join(str(message).split()), Note, stacklevel=2)


def require_package(module: str, needed_for: str, extra: str, spec: str) -> None:
    """Raise the one-line :class:`InputError` naming the install command when the optional
    package ``module`` is not installed (``extra``: geolrm's extra, ``spec``: the pip spec)."""
    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"{needed_for} needs {module}, an optional dependency; install it with "
            f"pip install 'geolrm[{extra}]' (or pip install '{spec}')"
        )
