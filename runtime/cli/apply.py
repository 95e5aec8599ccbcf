"""``ethos apply``: write the shaped dataset, the accounting of every input row and a training config."""

from __future__ import annotations

from typing import Any

from ethos.runtime.errors import EthosError

from .common import add_data_args, check_limit, data_settings


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "apply", help="write the shaped dataset and a training config",
        description="Apply a policy (or a plan saved by `ethos plan --save`, on the same data) to preference "
                    "data: writes dataset.parquet/jsonl (trl format with weight, margin_offset, inoculation), "
                    "accounting.jsonl (every input row's fate), plan.json, outcome.json and train.json.")
    s.add_argument("policy", metavar="POLICY|PLANFILE")
    add_data_args(s)
    s.add_argument("--out", required=True, metavar="DIR")
    s.set_defaults(func=run_apply, command="apply")


def run_apply(args: Any) -> int:
    from ethos.runtime import api

    check_limit(args.limit)
    try:
        applied = api.apply_to(args.policy, args.out, data_settings(args), progress=True)
    except KeyboardInterrupt:
        raise EthosError("interrupted; rerun to resume (`ethos train` uses an apply folder only once its "
                         "ethos-complete.json is written)", exit_code=130) from None
    print(applied.summary_line())
    offsets = offset_note(applied.dataset)
    if offsets:
        print(offsets)
    return 0


def offset_note(dataset: Any) -> str:
    """One line when the written dataset carries `loss` margin offsets: only a trainer that reads
    the ``margin_offset`` column (``ethos train``) applies them; else ""."""
    import numpy as np

    if "margin_offset" not in dataset.column_names:
        return ""
    n = int(np.count_nonzero(dataset.column("margin_offset").to_numpy(zero_copy_only=False)))
    if not n:
        return ""
    return (f"{n:,} training rows carry a margin offset (the `loss` protocol, also the protocol of a rule without "
            f"`via`): `ethos train` applies them; a trainer that ignores the `margin_offset` column loses them "
            f"(write `via data` for importance weights in the `weight` column instead)")
