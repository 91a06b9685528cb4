"""Exceptions the library raises for bad input (the CLI turns them into exit code 2)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input or environment: the message names the problem and, where possible, the fix.

    Keep the message to one line; the CLI prints it as ``error: <message>``.
    """


class MissingWeightsError(InputError):
    """A model artifact is not available locally; the message says how to fetch it."""
