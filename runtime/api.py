"""The library API: what the command line, the benches and notebooks call.

Each function takes typed settings (:mod:`ethos.runtime.settings`) and returns a typed result;
every expected failure is an :class:`~ethos.runtime.errors.EthosError` with a message for the
user. ::

    from ethos.runtime import api
    from ethos.runtime.settings import DataSettings, TrainSettings

    run = api.dry_run("policy.ethos", DataSettings(limit=200))       # ethos plan
    print(run.summary_line())
    applied = api.apply_to("policy.ethos", "out/apply", DataSettings(limit=200))   # ethos apply
    trained = api.train(applied, "out/run", TrainSettings(steps=50))              # ethos train

- :func:`prepare`: compile (or read a saved plan), load the data, featurize, check ethos.lock;
- :func:`dry_run`: prepare, then audit, simulate every intervention, re-fit, check every
  ``expect`` (:class:`DryRun`; its :meth:`DryRun.document` is plan.json);
- :func:`apply_to`: the dry run, then the shaped dataset, the accounting of every input row and
  the training config, written to a folder (:class:`Applied`);
- :func:`train`: DPO under the plan, from a policy (applied first, in memory), an apply folder
  (read once) or an :class:`Applied` (:class:`Trained`);
- :func:`evaluate`: the trained models against the base, concept by concept (:class:`Evaluation`);
- :func:`lock`: pin what a policy's names resolve to in ethos.lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ethos.compiler.plan import Plan, dump_plan

from .documents import SAVED_PLAN_FORMAT, SAVED_PLAN_KIND
from .errors import UsageError
from .planner import Outcome, PlanError, Prepared, check_output_dir, examples, lens_texts, prepare, shape, summary_line
from .settings import DataSettings, EvaluateSettings, TrainSettings
from .training import Trained, run_training

__all__ = [
    "Applied", "DataSettings", "DryRun", "EvaluateSettings", "Evaluation", "Prepared", "TrainSettings", "Trained",
    "apply_to", "dry_run", "evaluate", "lock", "prepare", "train",
]


# ---------------------------------------------------------------------------------------------
# The dry run (``ethos plan``)


@dataclass
class DryRun:
    """What a plan will do to the data, verified: the prepared inputs and the outcome."""

    prepared: Prepared
    outcome: Outcome
    data: DataSettings

    @property
    def plan(self) -> Plan:
        return self.prepared.plan

    @property
    def failed(self) -> int:
        """How many expectations failed (``ethos plan`` exits 3 when any did)."""
        return self.outcome.failed

    def data_entry(self) -> dict[str, Any]:
        """The data the run read: source, fingerprint, --limit, and the column mapping, split and
        subset (None when not used), so the run can be reproduced."""
        from .loading import data_entry

        return data_entry(self.prepared.data, self.data)

    def document(self) -> dict[str, Any]:
        """The plan document (plan.json, ``ethos plan --json``; docs/plan.md): what the reports render."""
        doc = self.outcome.to_dict()
        doc["data"] = self.data_entry()
        return doc

    def plan_json(self) -> dict[str, Any]:
        """The compiled plan as its canonical JSON reads back."""
        return json.loads(dump_plan(self.plan))

    def saved_plan(self) -> dict[str, Any]:
        """The saved-plan document (``ethos plan --save``): the plan with its data fingerprint."""
        return {"kind": SAVED_PLAN_KIND, "format": SAVED_PLAN_FORMAT, "plan": self.plan_json(),
                "data": self.data_entry(), "seed": self.data.seed}

    def summary_line(self) -> str:
        return summary_line(self.outcome)


def dry_run(policy: str | Path, data: DataSettings = DataSettings(), *, outputs: Sequence[str | Path] = (),
            progress: bool = False, command: str = "plan") -> DryRun:
    """Check the ``outputs`` folders can be written (before any work), :func:`prepare`, then audit,
    simulate, re-fit and check the expectations. Changes nothing. Raises ``EthosError``."""
    from .progress import stage

    for folder in outputs:
        check_output_dir(Path(folder))
    prep = prepare(policy, data, progress=progress, command=command)
    with stage("audit and re-fit", enabled=progress):
        outcome = shape(prep.plan, prep.table, prep.data.counts(), seed=data.seed, lenses=lens_texts(prep.plan),
                        membership=prep.membership, topic_labels=prep.topic_labels)
    outcome.examples = examples(outcome, prep.data.pairs)
    from .trace import rule_traces

    with stage("trace", enabled=progress):
        outcome.traces = rule_traces(prep.plan, prep.data.pairs, prep.table, prep.membership)
    return DryRun(prep, outcome, data)


# ---------------------------------------------------------------------------------------------
# Apply (``ethos apply``)


@dataclass
class Applied:
    """An applied policy: the shaped dataset and accounting (Arrow tables), the plan document
    and the training config, as written to ``out``."""

    run: DryRun
    out: Path
    dataset: Any  # pyarrow.Table: id, prompt, chosen, rejected, weight, margin_offset, inoculation
    accounting: Any  # pyarrow.Table: every input row's fate
    document: dict[str, Any]  # outcome.json
    config: dict[str, Any]  # train.json

    @property
    def plan(self) -> Plan:
        return self.run.plan

    def fates(self) -> dict[str, int]:
        from .apply import fate_counts

        return fate_counts(self.accounting)

    def summary_line(self) -> str:
        fates = self.fates()
        return (f"wrote {self.dataset.num_rows:,} training rows from {self.run.prepared.data.input_rows:,} input rows "
                f"to {self.out} ({', '.join(f'{v:,} {k}' for k, v in fates.items())}); "
                f"ESS {self.run.outcome.sim.ess:,.0f}")


def apply_to(policy: str | Path, out: str | Path, data: DataSettings = DataSettings(), *,
             progress: bool = False) -> Applied:
    """The dry run of ``policy`` (a policy file or a plan saved by ``ethos plan --save``, on the
    same data), then the shaped dataset, the accounting and the training config, written to
    ``out`` (see :mod:`ethos.runtime.apply`). Raises ``EthosError``; writes nothing on failure."""
    from .apply import shaped_tables, train_config, write_folder

    out = Path(out)
    run = dry_run(policy, data, outputs=(out,), progress=progress, command="apply")
    prep = run.prepared
    dataset, accounting = shaped_tables(run.outcome, prep.data)
    if accounting.num_rows != prep.data.input_rows:
        raise RuntimeError(f"the accounting has {accounting.num_rows} rows for {prep.data.input_rows} input rows")
    if dataset.num_rows == 0:
        raise PlanError("the plan leaves no pair in the dataset; nothing written")
    document = run.document()
    config = train_config(run.outcome, prep)
    write_folder(out, dataset=dataset, accounting=accounting, plan=prep.plan, document=document, config=config)
    return Applied(run, out, dataset, accounting, document, config)


# ---------------------------------------------------------------------------------------------
# Train (``ethos train``)


def train(source: str | Path | Applied, out: str | Path, settings: TrainSettings = TrainSettings(), *,
          data: DataSettings | None = None) -> Trained:
    """DPO (trl; ``settings.loss``, :mod:`ethos.runtime.losses`) or a reward model
    (``settings.reward_model``, :mod:`ethos.runtime.reward`) under a plan, with its per-pair
    weights, margin offsets and training-time interventions (:mod:`ethos.runtime.trainer`).
    ``source``: a policy (or saved plan) file — applied first with ``data`` into ``out/apply/``
    and trained on in memory —, an ``ethos apply`` folder (read once), or an :class:`Applied`.
    Checkpoints go to ``out/checkpoints`` and a rerun resumes from them
    (:mod:`ethos.runtime.training`). Writes ``out/adapter`` (or ``out/model``), ``out/plan.json``,
    ``out/log.jsonl`` and, last, ``out/train.json``. Raises ``EthosError``."""
    from .apply import read_folder
    from .distributed import open_group

    out = Path(out)
    group = open_group()  # under torchrun/accelerate launch: the ranks; else a group of one
    group.share(lambda: check_output_dir(out))
    applied = None
    if isinstance(source, Applied):
        applied = source
    else:
        src = Path(source)
        if src.is_dir():
            if data is not None:
                raise UsageError("data settings go with a policy, not with an apply folder")
            plan, config, table = read_folder(src)
            return run_training(plan, config, table, src, out, settings)
        if not src.is_file():
            raise PlanError(f"{src}: no such policy file or apply folder")
        if group.world_size > 1:
            # rank 0 alone applies the policy (featurizes, writes out/apply/) and hands the plan,
            # config and shaped table to the others: no two ranks featurize or write the same files
            kept: dict[str, Applied] = {}

            def apply() -> tuple[Any, Any, Any, Path]:
                a = kept["applied"] = apply_to(src, out / "apply", data or DataSettings(), progress=settings.progress)
                return a.plan, a.config, a.dataset, a.out

            plan, config, table, apply_dir = group.share(apply)
            trained = run_training(plan, config, table, apply_dir, out, settings)
            trained.applied = kept.get("applied")  # rank 0's
            return trained
        applied = apply_to(src, out / "apply", data or DataSettings(), progress=settings.progress)
    trained = run_training(applied.plan, applied.config, applied.dataset, applied.out, out, settings)
    trained.applied = applied
    return trained


# ---------------------------------------------------------------------------------------------
# Evaluate (``ethos evaluate``) and lock (``ethos lock``)


@dataclass
class Evaluation:
    """The evaluation report document (evaluate.json), exactly as it is written."""

    document: dict[str, Any]

    def json_text(self) -> str:
        return json.dumps(self.document, indent=2)


def evaluate(settings: EvaluateSettings, *, progress: bool = False) -> Evaluation:
    """Generate on held-out prompts with the base and each trained model, score every concept of
    the policy with its lenses, and compare each model's shifts with the plan's predictions
    (:mod:`ethos.runtime.evaluate`). Raises ``EthosError``."""
    from . import evaluate as E

    doc = E.evaluate(settings, progress=progress)
    return Evaluation(json.loads(json.dumps(doc, default=float)))  # the reports render exactly what is saved


def lock(policy: str | Path, data: DataSettings = DataSettings(), *, progress: bool = False) -> Path:
    """Resolve every name of ``policy`` on ``data`` — the model's files, lexicon, probe and SAE
    hashes, the data's fingerprint from its bytes; nothing is scored and the model is not run —
    and pin it in the ethos.lock beside it; returns the lock's path. Raises ``EthosError``
    (:class:`PlanError` for a saved plan: a lock belongs to a policy file). The same as
    :func:`ethos.runtime.lock.lock_policy`, which ``ethos lock`` calls without importing the
    statistics."""
    from .lock import lock_policy

    return lock_policy(policy, data, progress=progress)
