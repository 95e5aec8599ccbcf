"""The ``ethos`` command line: argparse only — parse, call one library function, write, exit.

Each command lives in a module of this package that exposes ``register(subparsers)``: it adds its
subparser(s) and sets ``func`` (the handler, ``run_x(args) -> int``) and ``command`` (the name in
error messages). Handlers import the library inside the function, so ``ethos --help`` and the
policy commands (``check``, ``fmt``, ``compile``, ``diff``) start without torch, transformers,
pandas or scipy. Modules here import at module level only the standard library,
``ethos.compiler``, and ``ethos.runtime.errors`` / ``documents`` / ``io``; no other module of
ethos imports this package.

Exit codes: 0 ok; 1 errors (diagnostics in a policy, bad data, a failed run); 2 usage (bad
arguments); 3 an expectation failed (``ethos plan``); 130 interrupted. A bad policy never shows a
traceback: it shows diagnostics. An expected failure is an :class:`~ethos.runtime.errors.EthosError`,
caught here once and printed as ``ethos <command>: error: <message>``. ``ETHOS_DEBUG=1`` shows the
traceback of an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EXIT_ERRORS, EXIT_INTERRUPTED, EXIT_OK, EthosError

DESCRIPTION = "Decide, concept by concept, what preference data teaches a model."
EPILOG = "exit codes: 0 ok, 1 errors, 2 usage, 3 an expectation failed (plan)"


def version() -> str:
    """The installed ethos version (package metadata), else the one in the source tree's
    ``pyproject.toml``, else ``unknown``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("ethos")
    except PackageNotFoundError:
        pass
    import tomllib

    try:
        with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (no metadata import at start-up)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any,
                 option_string: str | None = None) -> None:
        print(f"ethos {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, in the order ``ethos --help`` lists them."""
    from . import apply, audit, evaluate, featurize, lock, plan, policy, sae, trace, train

    p = argparse.ArgumentParser(prog="ethos", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action=_VersionAction, help="print the ethos version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (policy, featurize, audit, trace, plan, lock, apply, sae, train, evaluate):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = getattr(args, "command", None)
        return args.func(args)
    except EthosError as e:
        print(f"ethos {command}: error: {e}" if command else f"ethos: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ethos: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # an internal error: one line, unless asked for the traceback
        if os.environ.get("ETHOS_DEBUG"):
            raise
        print(f"ethos: internal error: {type(e).__name__}: {e} (set ETHOS_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_ERRORS
