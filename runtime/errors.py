"""The one base of every error ethos expects and explains to its user.

An :class:`EthosError` carries a message meant for the user as is (it names the file, the
concept, the value and what is wrong) and the exit code the command line returns for it. The
command line catches it in one place (``ethos.runtime.cli.main``) and prints
``ethos <command>: error: <message>``; anything else is an internal error.
"""

from __future__ import annotations

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_EXPECTATION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class EthosError(Exception):
    """An expected failure with a one-line message for the user and an exit code (1 by default;
    2 for a usage error)."""

    exit_code: int = EXIT_ERRORS

    def __init__(self, message: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class UsageError(EthosError):
    """Arguments that do not fit together (exit 2)."""

    exit_code = EXIT_USAGE
