"""``ethos lock``: pin what a policy's names resolve to in ethos.lock beside it."""

from __future__ import annotations

from typing import Any

from .common import add_data_args, check_limit, data_settings


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "lock", help="write ethos.lock beside a policy",
        description="Resolve every name of POLICY (model files' sha256, layer, SAE sha256 and latent ids, probe "
                    "exemplar and lexicon hashes, the dataset's fingerprint from its bytes) and pin it in ethos.lock "
                    "beside the policy. Nothing is scored and the model is not run: seconds. `ethos plan` and "
                    "`ethos apply` check the same lock.")
    s.add_argument("policy", metavar="POLICY")
    add_data_args(s, lock=False)
    s.set_defaults(func=run_lock, command="lock")


def run_lock(args: Any) -> int:
    from ethos.runtime.lock import lock_policy  # not through api: ethos lock imports no statistics

    check_limit(args.limit)
    path = lock_policy(args.policy, data_settings(args, update_lock=True), progress=True)
    print(f"wrote {path}")
    return 0
