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
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ethos.compiler.plan import PROTOCOL_KIND, dump_plan

from .io import atomic_write_bytes, atomic_write_text
from .planner import FORMAT, PlanError, _data_args, _fail, dry_run


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "apply", help="write the shaped dataset and a training config",
        description="Apply a policy (or a plan saved by `ethos plan --save`, on the same data) to preference "
                    "data: writes dataset.parquet/jsonl (trl format with weight, margin_offset, inoculation), "
                    "accounting.jsonl (every input row's fate), plan.json, outcome.json and train.json.")
    s.add_argument("policy", metavar="POLICY|PLANFILE")
    _data_args(s)
    s.add_argument("--out", required=True, metavar="DIR")
    s.set_defaults(func=run_apply)


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
    decided = sim.decided_by.copy()
    decided[(decided == "") & (sim.fate == "kept")] = "unchanged"
    reason[row_of] = decided
    detail[row_of] = ""
    acc_w[row_of], acc_copies[row_of], acc_swapped[row_of], acc_inoc[row_of] = weight, copies, swapped, inoc
    accounting = pa.table({
        "row": pa.array(np.arange(rows)), "id": pa.array(acc_id, pa.string()), "fate": pa.array(fate, pa.string()),
        "reason": pa.array(reason, pa.string()), "detail": pa.array(detail, pa.string()), "weight": acc_w,
        "copies": acc_copies, "swapped": acc_swapped, "inoculation": pa.array(acc_inoc, pa.string()),
    })
    return dataset, accounting


def _jsonl(table) -> str:
    """Arrow table → JSON Lines text (pandas' C writer; nested lists of messages stay nested)."""
    text = table.to_pandas().to_json(orient="records", lines=True, force_ascii=False)
    return text if text.endswith("\n") or not text else text + "\n"


def train_config(outcome, prep) -> dict[str, Any]:
    plan = prep.plan
    stats = {c.name: c for c in outcome.before.concepts}
    meta = prep.table.attrs.get("ethos", {})
    return {
        "format": FORMAT,
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
            for i in plan.interventions
            if PROTOCOL_KIND[i.protocol] == "activation" or i.protocol == "penalty"
        ],
        "defaults": {"beta": 0.1, "learning_rate": 2e-4, "lora": True, "lora_r": 16, "max_length": 256},
    }


def run_apply(args) -> int:
    import io

    import pyarrow.parquet as pq

    if args.limit is not None and args.limit < 1:
        return _fail("apply", "--limit must be a positive integer", 2)
    out = Path(args.out)
    try:
        prep, outcome = dry_run(args, progress=sys.stderr.isatty())
    except PlanError as e:
        return _fail("apply", str(e))
    except KeyboardInterrupt:
        return _fail("apply", "interrupted before anything was written; rerun to resume", 130)
    dataset, accounting = shaped_tables(outcome, prep.data)
    assert accounting.num_rows == prep.data.input_rows
    if dataset.num_rows == 0:
        return _fail("apply", "the plan leaves no pair in the dataset; nothing written")
    buf = io.BytesIO()
    pq.write_table(dataset, buf)
    atomic_write_bytes(out / "dataset.parquet", buf.getvalue())
    atomic_write_text(out / "dataset.jsonl", _jsonl(dataset))
    atomic_write_text(out / "accounting.jsonl", _jsonl(accounting))
    atomic_write_text(out / "plan.json", dump_plan(prep.plan))
    doc = outcome.to_dict()
    doc["data"] = {"source": prep.data_source, "fingerprint": prep.data.fingerprint, "limit": args.limit}
    atomic_write_text(out / "outcome.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "train.json", json.dumps(train_config(outcome, prep), indent=2) + "\n")
    fate_col = accounting.column("fate").to_numpy(zero_copy_only=False)
    fates = {f: int(np.count_nonzero(fate_col == f)) for f in ("kept", "reweighted", "relabelled", "excluded")}
    print(f"wrote {dataset.num_rows:,} training rows from {prep.data.input_rows:,} input rows to {out} "
          f"({', '.join(f'{v:,} {k}' for k, v in fates.items())}); ESS {outcome.sim.ess:,.0f}")
    return 0
