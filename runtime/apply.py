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
from .planner import FORMAT, PlanError, _data_args, _fail, check_output_dir, lens_texts, prepare, shape


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


def _messages(prompt, inoculation: list[str]) -> list[dict[str, str]]:
    msgs = [{"role": m.role, "content": m.content} for m in prompt]
    if inoculation:
        text = " ".join(inoculation)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": f"{text}\n\n{msgs[0]['content']}"}
        else:
            msgs.insert(0, {"role": "system", "content": text})
    return msgs


def shaped_records(outcome, data) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dataset rows, accounting rows) from a dry run's outcome and the loaded data."""
    sim = outcome.sim
    pairs = {p.id: p for p in data.pairs}
    position = {pid: k for k, pid in enumerate(outcome.ids)}
    records: list[dict[str, Any]] = []
    accounting: list[dict[str, Any]] = []
    excluded = {e.row: e for e in data.exclusions}
    for row in range(data.input_rows):
        if row in excluded:
            e = excluded[row]
            accounting.append({"row": row, "id": None, "fate": "excluded", "reason": e.reason, "detail": e.detail,
                               "weight": 0.0, "copies": 0, "swapped": False, "inoculation": []})
            continue
        pid = str(row)
        k = position.get(pid)
        if k is None:  # a usable pair that featurize left out (a missing score): excluded, said so
            accounting.append({"row": row, "id": pid, "fate": "excluded", "reason": "no_score",
                               "detail": "a concept could not be scored", "weight": 0.0, "copies": 0,
                               "swapped": False, "inoculation": []})
            continue
        p = pairs[pid]
        copies = int(sim.multiplicity[k])
        swapped = bool(sim.swapped[k])
        weight = float(sim.weights[k] / copies) if copies else 0.0
        fate = str(sim.fate[k])
        reason = sim.decided_by[k] or ("unchanged" if fate == "kept" else "")
        accounting.append({"row": row, "id": pid, "fate": fate, "reason": reason, "detail": "",
                           "weight": weight, "copies": copies, "swapped": swapped,
                           "inoculation": list(sim.inoculations[k])})
        chosen, rejected = (p.rejected, p.chosen) if swapped else (p.chosen, p.rejected)
        for _ in range(copies):
            records.append({
                "id": pid,
                "prompt": _messages(p.prompt, sim.inoculations[k]),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "weight": weight,
                "margin_offset": float(sim.margin_offset[k]),
                "inoculation": " ".join(sim.inoculations[k]) or None,
            })
    return records, accounting


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    if args.limit is not None and args.limit < 1:
        return _fail("apply", "--limit must be a positive integer", 2)
    out = Path(args.out)
    try:
        check_output_dir(out)
        prep = prepare(args.policy, data_path=args.data, limit=args.limit, strict=args.strict,
                       batch_size=args.batch_size, progress=sys.stderr.isatty(), update_lock=args.update_lock)
        outcome = shape(prep.plan, prep.table, prep.data.counts(), seed=args.seed, lenses=lens_texts(prep.plan))
    except PlanError as e:
        return _fail("apply", str(e))
    except KeyboardInterrupt:
        return _fail("apply", "interrupted before anything was written; rerun to resume", 130)
    records, accounting = shaped_records(outcome, prep.data)
    assert len(accounting) == prep.data.input_rows
    if not records:
        return _fail("apply", "the plan leaves no pair in the dataset; nothing written")

    import io

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    atomic_write_bytes(out / "dataset.parquet", buf.getvalue())
    atomic_write_text(out / "dataset.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(out / "accounting.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in accounting))
    atomic_write_text(out / "plan.json", dump_plan(prep.plan))
    doc = outcome.to_dict()
    doc["data"] = {"source": prep.data_source, "fingerprint": prep.data.fingerprint, "limit": args.limit}
    atomic_write_text(out / "outcome.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "train.json", json.dumps(train_config(outcome, prep), indent=2) + "\n")
    fates = {f: sum(a["fate"] == f for a in accounting) for f in ("kept", "reweighted", "relabelled", "excluded")}
    print(f"wrote {len(records):,} training rows from {prep.data.input_rows:,} input rows to {out} "
          f"({', '.join(f'{v:,} {k}' for k, v in fates.items())}); ESS {outcome.sim.ess:,.0f}")
    return 0
