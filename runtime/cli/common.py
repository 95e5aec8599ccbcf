"""Argument helpers shared by several commands (argparse only; no library imports)."""

from __future__ import annotations

from typing import Any

from ethos.runtime.errors import UsageError


def add_data_args(parser: Any, lock: bool = True, *, seed_help: str | None = None) -> None:
    """The data arguments of ``plan``, ``apply``, ``lock``, ``audit`` and ``featurize``: --data,
    --limit, --strict, --excluded, the column mapping (--columns, --label-a/-b/-tie), --split,
    --subset, --batch-size, --seed and (with ``lock``) --update-lock. ``seed_help`` replaces the
    help of --seed (for a command without filter and relabel draws). Validation of the mapping,
    split and subset is the data library's (a DataError with exit code 2)."""
    parser.add_argument("--data", metavar="PATH",
                        help="preference data: a file, a datasets folder, or a Hub id org/name "
                             "(default: the embedded hh-rlhf sample)")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N input rows")
    parser.add_argument("--strict", action="store_true", help="any excluded row is an error")
    parser.add_argument("--excluded", metavar="FILE",
                        help="write each excluded row (line, reason, preview) as JSON Lines to FILE")
    parser.add_argument("--columns", metavar="MAPPING",
                        help="map columns to roles: prompt=…,chosen=…,rejected=… | prompt=…,a=…,b=…,label=… | "
                             "prompt=…,a=…,b=…,score_a=…,score_b=… (see docs/your-data.md)")
    for side, meaning in (("a", "a"), ("b", "b"), ("tie", "a tie")):
        parser.add_argument(f"--label-{side}", metavar="VALUE",
                            help=f"the label value meaning {meaning} (with --columns …,label=…; "
                                 f"a negative value as --label-{side}=-1)")
    parser.add_argument("--split", metavar="NAME", help="split of a Hub dataset or a saved DatasetDict folder")
    parser.add_argument("--subset", metavar="NAME", help="subset (configuration) of a Hub dataset")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B",
                        help="pairs per forward batch of the model (default 8)")
    parser.add_argument("--seed", type=int, default=0,
                        help=seed_help or "seed of the filter and relabel draws and the bootstrap")
    if lock:
        parser.add_argument("--update-lock", action="store_true",
                            help="accept a changed resolution and rewrite ethos.lock")


def check_limit(limit: int | None) -> None:
    """``--limit`` must be a positive integer when given (a usage error, exit 2)."""
    if limit is not None and limit < 1:
        raise UsageError("--limit must be a positive integer")


def data_settings(args: Any, *, update_lock: bool | None = None) -> Any:
    """The :class:`~ethos.runtime.settings.DataSettings` of the arguments :func:`add_data_args` added."""
    from ethos.runtime.settings import DataSettings

    return DataSettings(path=args.data, limit=args.limit, strict=args.strict, batch_size=args.batch_size,
                        seed=args.seed,
                        update_lock=getattr(args, "update_lock", False) if update_lock is None else update_lock,
                        **{name: getattr(args, name, None)
                           for name in ("columns", "label_a", "label_b", "label_tie", "split", "subset", "excluded")})


def progress_on_terminal() -> bool:
    """Progress bars only where a person watches stderr. (Kept for commands that have not moved
    to :mod:`ethos.runtime.progress`, which picks a bar or plain lines itself.)"""
    import sys

    return sys.stderr.isatty()
