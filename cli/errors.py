"""How every command turns the project's errors into a one-line message and an exit code.

Library code raises its own exceptions (BundleError, BackendUnavailable, VideoDecodeError,
ExportValidationError, ...); only this layer knows about click. Exit codes: 1 for a failure of the
command (click's default), 2 where a command documents "could not run" (parity, engine).
"""
from __future__ import annotations

import click


class CommandError(click.ClickException):
    """`Error: <message>` on stderr and exit code 1."""


class CannotRun(click.ClickException):
    """`Error: <message>` on stderr and exit code 2: the command could not run at all."""

    exit_code = 2
