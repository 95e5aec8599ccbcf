"""``ethos apply``: write the shaped dataset, the accounting of every input row, the plan and a
training config for ``ethos train``.

Output folder::

    dataset.parquet, dataset.jsonl   trl preference format: id, prompt (chat messages, with the
                                     inoculation instruction as a system message where a rule
                                     added one), chosen and rejected (one assistant message each),
                                     weight, margin_offset, inoculation; a pair a filter rule
                                     duplicates appears once per copy, a dropped pair not at all
    accounting.jsonl                 every input row: its fate (kept, reweighted, relabelled,
                                     excluded), the reason or the rule that decided it, weight,
                                     copies, whether it was swapped, the instructions it got
    plan.json                        the compiled plan
    outcome.json                     the dry run's document (as ``ethos plan --json``)
    train.json                       the training config ``ethos train`` reads
    ethos-complete.json              written last: the folder is complete (each file's size and
                                     sha256); ``ethos train`` refuses a folder without it
                                     (:mod:`ethos.runtime.outputs`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ethos.compiler.plan import dump_plan

from .documents import FATES, TRAIN_CONFIG_FORMAT
from .interventions import in_training, rule_text
from .outputs import FolderWriter, IncompleteOutput, check_complete
from .settings import TRAIN_CONFIG_DEFAULTS

FILES = ("dataset.parquet", "dataset.jsonl", "accounting.jsonl", "plan.json", "outcome.json", "train.json")


def shaped_tables(outcome, data):
    """(dataset, accounting) as Arrow tables, built column by column from a dry run's outcome and
    the loaded data (no Python object per output cell, so a million pairs take seconds)."""
    import pyarrow as pa

    sim = outcome.sim
    n = len(outcome.ids)
    pairs = {p.id: p for p in data.pairs}
    ordered = [pairs[i] for i in outcome.ids]
    swapped = sim.swapped
    inoc = sim.inoculation

    # prompts: chat messages, with the inoculation instruction as (or prepended to) a system message
    offsets, roles, contents = [0], [], []
    for k, p in enumerate(ordered):
        msgs = p.prompt
        text = inoc[k]
        if text:
            if msgs and msgs[0].role == "system":
                roles.append("system")
                contents.append(f"{text}\n\n{msgs[0].content}")
                msgs = msgs[1:]
            else:
                roles.append("system")
                contents.append(text)
        for m in msgs:
            roles.append(m.role)
            contents.append(m.content)
        offsets.append(len(roles))
    message = lambda r, c: pa.StructArray.from_arrays([pa.array(r, pa.string()), pa.array(c, pa.string())],  # noqa: E731
                                                       names=["role", "content"])
    prompt = pa.ListArray.from_arrays(pa.array(offsets, pa.int64()), message(roles, contents))
    chosen_text = [p.rejected if s else p.chosen for p, s in zip(ordered, swapped)]
    rejected_text = [p.chosen if s else p.rejected for p, s in zip(ordered, swapped)]
    one = pa.array(np.arange(n + 1), pa.int64())
    assistant = ["assistant"] * n
    chosen = pa.ListArray.from_arrays(one, message(assistant, chosen_text))
    rejected = pa.ListArray.from_arrays(one, message(assistant, rejected_text))

    copies = sim.multiplicity.astype(np.int64)
    weight = np.where(copies > 0, sim.weights / np.maximum(copies, 1), 0.0)
    take = pa.array(np.repeat(np.arange(n), copies))
    ids = pa.array(outcome.ids, pa.string())
    inoc_col = pa.array(np.where(inoc == "", None, inoc), pa.string())
    dataset = pa.table({
        "id": ids.take(take),
        "prompt": prompt.take(take),
        "chosen": chosen.take(take),
        "rejected": rejected.take(take),
        "weight": pa.array(weight).take(take),
        "margin_offset": pa.array(sim.margin_offset.astype(float)).take(take),
        "inoculation": inoc_col.take(take),
    })

    # accounting: every input row, in input order
    rows = data.input_rows
    row_of = np.array([int(i) for i in outcome.ids], dtype=np.int64)
    fate = np.full(rows, "excluded", dtype=object)
    reason = np.full(rows, "no_score", dtype=object)  # a usable pair featurize could not score
    detail = np.full(rows, "", dtype=object)
    acc_id = np.full(rows, None, dtype=object)
    acc_w, acc_copies = np.zeros(rows), np.zeros(rows, dtype=np.int64)
    acc_swapped = np.zeros(rows, dtype=bool)
    acc_inoc = np.full(rows, "", dtype=object)
    usable_rows = np.array([int(p.id) for p in data.pairs], dtype=np.int64)
    acc_id[usable_rows] = [p.id for p in data.pairs]
    detail[usable_rows] = "a concept could not be scored"
    for e in data.exclusions:
        reason[e.row], detail[e.row] = e.reason, e.detail
    fate[row_of] = sim.fate
    reason[row_of] = _reasons(outcome.plan, sim)
    detail[row_of] = ""
    acc_w[row_of], acc_copies[row_of], acc_swapped[row_of], acc_inoc[row_of] = weight, copies, swapped, inoc
    accounting = pa.table({
        "row": pa.array(np.arange(rows)), "id": pa.array(acc_id, pa.string()), "fate": pa.array(fate, pa.string()),
        "reason": pa.array(reason, pa.string()), "detail": pa.array(detail, pa.string()), "weight": acc_w,
        "copies": acc_copies, "swapped": acc_swapped, "inoculation": pa.array(acc_inoc, pa.string()),
    })
    return dataset, accounting


def _reasons(plan, sim) -> np.ndarray:
    """Per usable pair, the text of the rule that decided its fate ("unchanged" for a kept pair no
    rule touched; "" for one a rule touched below the reweighting tolerance)."""
    texts = {i.rule_id: rule_text(i) for i in plan.interventions}
    ids, inverse = np.unique(sim.decided_by.astype(str), return_inverse=True)
    out = np.array([texts.get(r, r) for r in ids], dtype=object)[inverse.reshape(-1)]
    out[(sim.decided_by == "") & (sim.fate == "kept")] = "unchanged"
    return out


def jsonl_text(table) -> str:
    """Arrow table → JSON Lines text (pandas' C writer; nested lists of messages stay nested)."""
    text = table.to_pandas().to_json(orient="records", lines=True, force_ascii=False)
    return text if text.endswith("\n") or not text else text + "\n"


def train_config(outcome, prep) -> dict[str, Any]:
    """The training config ``ethos train`` reads (train.json in the apply folder): the plan's model,
    layer and SAE, each concept's α and scale, the interventions the trainer realises, and the
    training defaults."""
    plan = prep.plan
    scoped = [i for i in plan.interventions if in_training(i) and i.scope is not None]
    if scoped:  # the trainer applies hooks and loss terms to every example: it would ignore the topic
        from .loading import PlanError

        i = scoped[0]
        raise PlanError(f"line {i.span.line}: `{i.action} concept {i.concept} via {i.protocol} when topic {i.scope}`: "
                        f"training-time protocols (ablation, steering, penalty) are not yet limited to a topic's "
                        f"examples by the trainer; use a data protocol (data, filter, relabel, inoculation, loss) "
                        f"for a scoped rule, or drop the `when` clause")
    stats = {c.name: c for c in outcome.before.concepts}
    meta = prep.table.attrs.get("ethos", {})
    return {
        "format": TRAIN_CONFIG_FORMAT,
        "plan": "plan.json",
        "dataset": "dataset.parquet",
        "model": plan.model.name,
        "layer": meta.get("layer") if meta.get("layer") is not None else plan.model.layer,
        "sae": plan.sae.name,
        "policy": prep.policy_path,
        "data": {"source": prep.data_source, "fingerprint": prep.data.fingerprint},
        "concepts": {n: {"alpha": stats[n].alpha, "scale": stats[n].scale} for n in stats},
        "training_interventions": [
            i.model_dump(mode="json", exclude={"span"}) | {"line": i.span.line}
            for i in plan.interventions if in_training(i)
        ],
        "defaults": dict(TRAIN_CONFIG_DEFAULTS),
    }


def fate_counts(accounting) -> dict[str, int]:
    """How many input rows ended in each fate (the accounting table's "fate" column)."""
    col = accounting.column("fate").to_numpy(zero_copy_only=False)
    return {f: int(np.count_nonzero(col == f)) for f in FATES}


def write_folder(out: Path, *, dataset, accounting, plan, document: dict[str, Any], config: dict[str, Any]) -> None:
    """Write an apply folder (see the module docstring): every file atomically, the completion
    marker last (one file at a time, so memory holds one file's bytes)."""
    import io

    import pyarrow.parquet as pq

    with FolderWriter(out, "apply", names=FILES) as w:
        buf = io.BytesIO()
        pq.write_table(dataset, buf)
        w.write("dataset.parquet", buf.getvalue())
        del buf
        w.write("dataset.jsonl", jsonl_text(dataset))
        w.write("accounting.jsonl", jsonl_text(accounting))
        w.write("plan.json", dump_plan(plan))
        w.write("outcome.json", json.dumps(document, indent=2) + "\n")
        w.write("train.json", json.dumps(config, indent=2) + "\n")


def read_folder(folder: Path) -> tuple[Any, dict[str, Any], Any]:
    """An apply folder, read once: ``(plan, train config, dataset as an Arrow table)``. A folder
    whose ``ethos apply`` did not finish (no completion marker) is refused."""
    import pyarrow.parquet as pq

    from ethos.compiler.plan import load_plan

    from .planner import PlanError

    for name in ("train.json", "plan.json", "dataset.parquet"):
        if not (folder / name).is_file():
            if (folder / name).exists() or not any((folder / n).exists() for n in FILES):
                raise PlanError(f"{folder} is not an `ethos apply` output folder (no {name})")
            raise PlanError(f"{folder} is incomplete: an `ethos apply` into it did not finish (no {name}); "
                            f"run `ethos apply` into it again")
    try:
        check_complete(folder, "apply")
    except IncompleteOutput as e:
        raise PlanError(str(e)) from None
    try:
        plan = load_plan((folder / "plan.json").read_text(encoding="utf-8"))
        config = json.loads((folder / "train.json").read_text(encoding="utf-8"))
        table = pq.read_table(folder / "dataset.parquet")
    except (ValueError, OSError) as e:
        raise PlanError(f"{folder}: {e}") from e
    return plan, config, table
