"""The dry run: what a plan will do to a dataset, verified before any training.

``shape(plan, table, rows)`` takes a plan and the featurize table of the usable pairs and

1. audits the data (``audit_scores``): per concept d, q and the joint Bradley–Terry α with CIs;
2. simulates every data and loss intervention (``interventions.simulate``);
3. re-fits the same joint model on what the interventions produce — orientation after
   relabelling, weights × filter copies, the loss protocol's margin offsets — and compares α′
   with the target k·α for every concept, flagging concepts that moved though no rule named them;
4. checks every ``expect``.

Its ``to_dict()`` is the document that ``ethos plan --json`` prints and the reports render; the
reports read only that document and the serialised plan.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ethos.compiler.plan import PROTOCOL_KIND, Plan

from .audit import AuditResult, audit_scores, joint
from .interventions import FATES, Simulation, simulate

FORMAT = 1
SIGNIFICANCE = 0.05
CALIBRATION_PAIRS = 200_000
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


@dataclass
class Outcome:
    plan: Plan
    before: AuditResult
    after: AuditResult
    sim: Simulation
    ids: list[str]
    rows: dict[str, Any]
    concepts: list[dict[str, Any]]
    expectations: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def failed(self) -> int:
        return sum(not e["met"] for e in self.expectations)

    def to_dict(self) -> dict[str, Any]:
        from .audit import _clean

        w = self.sim.weights
        live = w > 0
        hist, edges = np.histogram(w[live], bins=30) if live.any() else (np.zeros(0), np.zeros(0))
        return _clean({
            "format": FORMAT,
            "policy": {"name": self.plan.policy, "path": self.plan.source.path, "sha256": self.plan.source.sha256},
            "rows": self.rows,
            "ess": self.sim.ess,
            "ess_fraction": self.sim.ess / max(1, int(live.sum())),
            "concepts": self.concepts,
            "interventions": _interventions(self.plan, self.sim),
            "expectations": self.expectations,
            "warnings": self.warnings,
            "notes": self.sim.notes + self.before.notes,
            "correlated": self.before.correlated,
            "weights": {
                "min": float(w[live].min()) if live.any() else None,
                "max": float(w[live].max()) if live.any() else None,
                "histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
            },
            "joint": {"before": self.before.joint, "after": self.after.joint},
            "settings": {**self.before.settings, "plan_seed": self.seed},
        })


def _interventions(plan: Plan, sim: Simulation) -> list[dict[str, Any]]:
    out = []
    for i in plan.interventions:
        kind = PROTOCOL_KIND[i.protocol]
        tag = f"line {i.span.line}: {i.action} concept {i.concept} via {i.protocol}"
        affected = int(np.count_nonzero(sim.decided_by == tag))
        if i.protocol == "inoculation":
            affected = int(np.count_nonzero([i.text in t for t in sim.inoculation[sim.inoculation != ""]]))
        out.append({
            "line": i.span.line,
            "concept": i.concept,
            "action": i.action,
            "factor": i.factor,
            "protocol": i.protocol,
            "kind": kind,
            "simulated": i.protocol in ("data", "filter", "relabel", "loss"),  # penalty: a training-time loss term
            "pairs_affected": affected if i.protocol != "loss" else int(np.count_nonzero(sim.margin_offset)),
            "realised_in": {"data": "data", "loss": "loss (in training)", "activation": "activations (in training)"}[kind],
        })
    return out


def _after_table(table, names: list[str], sim: Simulation):
    """The featurize table as the interventions leave it: relabelled pairs have their sides swapped."""
    after = table.copy()
    flip = sim.swapped
    if flip.any():
        for name in names:
            c, r = f"{name}.chosen", f"{name}.rejected"
            cv, rv = after[c].to_numpy().copy(), after[r].to_numpy().copy()
            after[c] = np.where(flip, rv, cv)
            after[r] = np.where(flip, cv, rv)
    return after


def shape(plan: Plan, table, rows: dict[str, Any], *, seed: int = 0, n_boot: int | None = None,
          lenses: dict[str, str] | None = None) -> Outcome:
    """Audit, simulate, re-fit and check expectations (see the module docstring)."""
    names = [c.name for c in plan.concepts]
    kwargs = {} if n_boot is None else {"n_boot": n_boot}
    before = audit_scores(table, names, seed=seed, rows=rows, lenses=lenses, **kwargs)
    stats = {c.name: c for c in before.concepts}
    scale = {n: stats[n].scale for n in names}
    values = table.loc[:, [f"{n}.{s}" for s in ("chosen", "rejected") for n in names]].to_numpy(dtype=float)
    delta = values[:, : len(names)] - values[:, len(names):]
    finite = np.all(np.isfinite(delta), axis=1)
    sd = np.array([scale[n] if scale[n] and math.isfinite(scale[n]) and scale[n] > 0 else np.inf for n in names])
    z = np.where(np.isfinite(delta), delta / sd, 0.0)
    alpha = np.array([stats[n].alpha for n in names])
    # calibrating the data weights needs only the coefficients, not their CIs: on a large dataset
    # a fixed random subsample of CALIBRATION_PAIRS pairs is enough (the final re-fit uses all)
    sub = np.flatnonzero(finite)
    if len(sub) > CALIBRATION_PAIRS:
        sub = np.sort(np.random.default_rng(seed).choice(sub, CALIBRATION_PAIRS, replace=False))

    def refit(zz: np.ndarray, ww: np.ndarray) -> np.ndarray:
        return joint(zz[sub], ww[sub], names=names).alpha

    sim = simulate(plan, names, z, alpha, delta=np.where(np.isfinite(delta), delta, 0.0), seed=seed,
                   calibrate=refit)
    sim.weights = np.where(finite, sim.weights, 0.0)

    after_table = _after_table(table, names, sim)
    after = audit_scores(after_table, names, weights=sim.weights, scale=scale, seed=seed, rows=rows,
                         lenses=lenses, **kwargs)
    offset = sim.margin_offset
    after_alpha = {c.name: (c.alpha, c.alpha_ci) for c in after.concepts}
    if np.any(offset != 0):
        # the loss protocol: a logistic fit with the margin offset learns k·α (module docstring)
        fitted = [n for n in names if math.isfinite(stats[n].scale) and stats[n].scale > 0]
        cols = [names.index(n) for n in fitted]
        zf = z[:, cols] * sim.sign[:, None]
        fit = joint(zf, sim.weights, names=fitted, offset=offset)
        for k, n in enumerate(fitted):
            after_alpha[n] = (float(fit.alpha[k]), [float(fit.lo[k]), float(fit.hi[k])])

    # shares after the plan are relative to the whole signal before it (a relative share of the
    # shaped signal would stay 100% for a lone blocked concept)
    a_before = np.nan_to_num(alpha)
    total_before = float(np.sum(np.mean(np.abs(z * a_before[None, :]), axis=0)))
    a_after = np.nan_to_num(np.array([after_alpha[n][0] for n in names], dtype=float))
    w = sim.weights
    contrib_after = (w @ np.abs(z * sim.sign[:, None] * a_after[None, :])) / max(float(w.sum()), 1e-12)
    share_after = {n: (float(contrib_after[j]) / total_before if total_before > 0 else float("nan"))
                   for j, n in enumerate(names)}

    factors = plan.factors()
    rules_of: dict[str, list[str]] = {}
    for i in plan.interventions:
        rules_of.setdefault(i.concept, []).append(i.protocol)
    concepts, warnings = [], []
    for name in names:
        b = stats[name]
        a_alpha, a_ci = after_alpha[name]
        k = factors.get(name)
        shaped_in_data = any(PROTOCOL_KIND[p] == "data" and p != "inoculation" or p == "loss"
                             for p in rules_of.get(name, []))
        target = k * b.alpha if (k is not None and shaped_in_data) else b.alpha
        entry = {
            "name": name,
            "lens": b.lens,
            "factor": k,
            "protocols": rules_of.get(name, []),
            "alpha_before": b.alpha,
            "alpha_before_ci": b.alpha_ci,
            "alpha_after": a_alpha,
            "alpha_after_ci": a_ci,
            "alpha_target": target,
            "on_target": _within(target, a_ci) if k is not None else None,
            "share_before": b.share,
            "share_after": share_after[name],
            "d": b.d,
            "d_ci": b.d_ci,
            "q": b.q,
            "win_rate": b.win_rate,
            "collateral": False,
            "note": b.note,
        }
        if k is not None and k != 1 and (not math.isfinite(b.q) or b.q >= SIGNIFICANCE):
            warnings.append(f"concept '{name}' has no significant effect in this data (q = {_fmt(b.q)}); "
                            f"the rule on it changes little")
        if k is None and math.isfinite(b.alpha) and math.isfinite(a_alpha) and not _within(a_alpha, b.alpha_ci):
            entry["collateral"] = True
            warnings.append(f"concept '{name}' moved (α {b.alpha:+.3f} → {a_alpha:+.3f}) though no rule names it: "
                            f"it is correlated with a shaped concept")
        if k is not None and shaped_in_data and not entry["on_target"] and math.isfinite(a_alpha):
            warnings.append(f"concept '{name}': α′ = {a_alpha:+.3f} misses the target k·α = {target:+.3f} "
                            f"(95% CI {_fmt(a_ci[0])} to {_fmt(a_ci[1])})")
        concepts.append(entry)

    # rows: each input row in exactly one fate
    fate_counts = {f: int(np.sum(sim.fate == f)) for f in FATES}
    excluded_rows = int(rows.get("input", 0)) - int(rows.get("usable", len(table)))
    fate_counts["excluded"] += excluded_rows
    out_rows = {"input": int(rows.get("input", len(table))), **fate_counts, "usable": int(rows.get("usable", len(table))),
                "excluded_reasons": {**dict(rows.get("excluded", {})),
                                     **({"filtered": int(np.sum(sim.fate == "excluded"))} if np.any(sim.fate == "excluded") else {})}}

    ids = table["id"].astype(str).tolist()
    outcome = Outcome(plan, before, after, sim, ids, out_rows, concepts, [], warnings, seed)
    outcome.expectations = [_check(e, outcome) for e in plan.expectations]
    return outcome


def _within(x: float, ci) -> bool:
    lo, hi = ci
    return all(v is not None and math.isfinite(v) for v in (x, lo, hi)) and lo <= x <= hi


def _fmt(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _check(e, o: Outcome) -> dict[str, Any]:
    if e.kind == "concept":
        c = next(c for c in o.concepts if c["name"] == e.concept)
        before = o.before.concept(e.concept)
        after = o.after.concept(e.concept)
        if e.metric == "share":
            value = c["share_before"] if e.phase == "before" else c["share_after"]
        elif e.metric == "alpha":
            value = c["alpha_before"] if e.phase == "before" else c["alpha_after"]
        else:
            value = getattr(before if e.phase == "before" else after, e.metric)
    elif e.kind == "pairs":
        usable = max(1, o.rows["usable"])
        if e.fate == "kept":  # in an expectation, "kept" means still in the training data
            value = sum(o.rows[f] for f in ("kept", "reweighted", "relabelled")) / usable
        elif e.fate == "excluded":
            value = int(np.sum(o.sim.fate == "excluded")) / usable
        else:
            value = o.rows[e.fate] / usable
    else:
        live = int(np.sum(o.sim.weights > 0))
        value = o.sim.ess / max(1, live)
    met = value is not None and math.isfinite(value) and OPS[e.op](value, e.value)
    return {"text": e.text, "line": e.span.line, "value": value, "met": bool(met)}


def summary_line(o: Outcome) -> str:
    r = o.rows
    met = len(o.expectations) - o.failed
    return (f"Plan: {r['kept']:,} pairs kept, {r['reweighted']:,} reweighted, {r['relabelled']:,} relabelled, "
            f"{r['excluded']:,} excluded; {met} expectation{'s' * (met != 1)} met, {o.failed} failed.")


# ---------------------------------------------------------------------------------------------
# The pipeline shared by ``ethos plan``, ``ethos apply`` and ``ethos lock``

SAVED_KIND = "ethos-saved-plan"


class PlanError(Exception):
    """A clear, expected failure (bad input, stale lock, unwritable output): one line, exit 1."""


@dataclass
class Prepared:
    plan: Plan
    policy_path: str | None  # None for a saved plan
    data: Any  # LoadResult
    table: Any  # the featurize table of the usable pairs
    data_source: str


def lens_texts(plan: Plan) -> dict[str, str]:
    return {c.name: c.lens_text() for c in plan.concepts}


def load_policy_or_plan(path: str) -> tuple[Plan | None, dict[str, Any] | None, list]:
    """A policy file (compiled) or a saved plan file (``ethos plan --save``). Returns (plan, saved
    document or None, diagnostics)."""
    import json

    from ethos.compiler.compile import compile_file
    from ethos.compiler.plan import Plan as PlanModel

    p = Path(path)
    if p.suffix == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"cannot read saved plan {path}: {e}") from e
        if not isinstance(doc, dict) or doc.get("kind") != SAVED_KIND:
            raise PlanError(f"{path} is not a saved plan (write one with `ethos plan POLICY --save FILE`)")
        try:
            from ethos.compiler.plan import load_plan

            plan = load_plan(json.dumps(doc["plan"]))
        except (ValueError, KeyError) as e:
            raise PlanError(f"{path}: {e}") from e
        assert isinstance(plan, PlanModel)
        return plan, doc, []
    result = compile_file(path)
    return result.plan, None, result.diagnostics


def check_output_dir(out: Path) -> None:
    """Fail before any work if the output folder cannot be written."""
    import os
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ethos-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PlanError(f"cannot write to output folder {out}: {e.strerror or e}") from e


def prepare(policy: str, *, data_path: str | None, limit: int | None, strict: bool, batch_size: int = 8,
            progress: bool = False, update_lock: bool = False) -> Prepared:
    """Compile (or load a saved plan), load the data, featurize, and check the lock."""
    import sys

    from ethos.compiler.errors import render_all

    from .data import DataError, load_pairs
    from .featurize import FeaturizeError, featurize
    from .lenses import LensError
    from .lock import StaleLock, check, entry_from_table
    from .model import ModelError

    plan, saved, diags = load_policy_or_plan(policy)
    if plan is None:
        print(render_all(diags), file=sys.stderr)
        raise PlanError(f"{policy} has errors")
    if diags:
        print(render_all(diags), file=sys.stderr)
    source = str(data_path) if data_path else "embedded hh-rlhf helpful-base sample (400 rows)"
    try:
        data = load_pairs(data_path, limit=limit, strict=strict)
        if saved is not None and saved.get("data", {}).get("fingerprint") != data.fingerprint:
            raise PlanError(
                f"the saved plan {policy} was made on other data (fingerprint "
                f"{str(saved.get('data', {}).get('fingerprint'))[:12]}…, this data {data.fingerprint[:12]}…); "
                f"apply it to the same data and --limit, or plan again")
        if not data.pairs:
            raise PlanError(f"all {data.input_rows} input rows were excluded ({data.counts()['excluded']}); nothing to plan")
        table = featurize(plan, data, batch_size=batch_size, progress=progress)
    except (DataError, LensError, ModelError, FeaturizeError) as e:
        raise PlanError(str(e)) from e
    if saved is None:
        try:
            check(policy, entry_from_table(table, source), update=update_lock)
        except StaleLock as e:
            raise PlanError(str(e)) from e
    return Prepared(plan, None if saved is not None else policy, data, table, source)


# ---------------------------------------------------------------------------------------------
# ``ethos plan``


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "plan", help="the dry run: what a policy will change in the data, verified",
        description="Compile POLICY, featurize the data (cached), audit it, simulate every intervention, "
                    "re-fit, check every expect, and write the report. Changes nothing. "
                    "Exit codes: 0 ok, 1 errors, 3 an expectation failed.")
    s.add_argument("policy", metavar="POLICY", help="a policy file (.ethos)")
    _data_args(s)
    s.add_argument("--out", default="ethos-out/plan", metavar="DIR", help="report folder (default: ethos-out/plan)")
    s.add_argument("--save", metavar="PLANFILE", help="save the plan with its data fingerprint, for `ethos apply`")
    s.add_argument("--json", action="store_true", help="print the plan document as JSON")
    s.set_defaults(func=run_plan)

    s = subparsers.add_parser(
        "lock", help="write ethos.lock beside a policy",
        description="Resolve every name of POLICY (model and SAE sha256, layer, latent ids, probe direction "
                    "hashes, lexicon hashes, dataset fingerprint) and pin it in ethos.lock beside the policy.")
    s.add_argument("policy", metavar="POLICY")
    _data_args(s, lock=False)
    s.set_defaults(func=run_lock)


def _data_args(s, lock: bool = True) -> None:
    s.add_argument("--data", metavar="PATH", help="preference data (default: the embedded hh-rlhf sample)")
    s.add_argument("--limit", type=int, metavar="N", help="the first N input rows")
    s.add_argument("--strict", action="store_true", help="any excluded row is an error")
    s.add_argument("--batch-size", type=int, default=8, metavar="B")
    s.add_argument("--seed", type=int, default=0, help="seed of the filter and relabel draws and the bootstrap")
    if lock:
        s.add_argument("--update-lock", action="store_true", help="accept a changed resolution and rewrite ethos.lock")


def _fail(command: str, message: str, code: int = 1) -> int:
    import sys

    print(f"ethos {command}: error: {message}", file=sys.stderr)
    return code


def dry_run(args, *, progress: bool, extra_dirs: tuple[Path, ...] = ()) -> tuple[Prepared, Outcome]:
    """What ``plan`` and ``apply`` share: check the output folders first, then prepare (compile,
    data, featurize, lock) and shape. Raises PlanError."""
    for folder in (Path(args.out), *extra_dirs):
        check_output_dir(folder)
    prep = prepare(args.policy, data_path=args.data, limit=args.limit, strict=args.strict,
                   batch_size=args.batch_size, progress=progress, update_lock=args.update_lock)
    return prep, shape(prep.plan, prep.table, prep.data.counts(), seed=args.seed, lenses=lens_texts(prep.plan))


def run_plan(args) -> int:
    import json
    import sys

    from ethos.compiler.plan import dump_plan

    from .io import atomic_write_text

    if args.limit is not None and args.limit < 1:
        return _fail("plan", "--limit must be a positive integer", 2)
    out = Path(args.out)
    try:
        prep, outcome = dry_run(args, progress=not args.json and sys.stderr.isatty(),
                                extra_dirs=(Path(args.save).resolve().parent,) if args.save else ())
    except PlanError as e:
        return _fail("plan", str(e))
    except KeyboardInterrupt:
        return _fail("plan", "interrupted; finished featurize batches are cached, rerun to resume", 130)
    doc = outcome.to_dict()
    doc["data"] = {"source": prep.data_source, "fingerprint": prep.data.fingerprint, "limit": args.limit}
    plan_json = json.loads(dump_plan(prep.plan))
    from .report import render_plan_html, render_plan_markdown, print_plan_report

    atomic_write_text(out / "plan.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "plan.md", render_plan_markdown(doc, plan_json))
    atomic_write_text(out / "plan.html", render_plan_html(doc, plan_json, examples=examples(outcome, prep)))
    if args.save:
        saved = {"kind": SAVED_KIND, "format": FORMAT, "plan": plan_json, "data": doc["data"], "seed": args.seed}
        atomic_write_text(Path(args.save), json.dumps(saved, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_plan_report(doc, plan_json)
        print(f"reports: {out / 'plan.html'}, {out / 'plan.md'}, {out / 'plan.json'}", file=sys.stderr)
        print(summary_line(outcome))
    return 3 if outcome.failed else 0


def examples(outcome: Outcome, prep: Prepared, per_rule: int = 3) -> list[dict[str, Any]]:
    """The pairs most affected by each simulated rule, with their text (escaped by the template)."""
    pairs = {p.id: p for p in prep.data.pairs}
    sim = outcome.sim
    out = []
    for i in outcome.plan.interventions:
        tag = f"line {i.span.line}: {i.action} concept {i.concept} via {i.protocol}"
        idx = np.flatnonzero(sim.decided_by == tag)
        strength = np.abs(sim.weights[idx] - 1.0) + sim.swapped[idx] + (sim.multiplicity[idx] == 0)
        idx = idx[np.argsort(-strength, kind="stable")]
        shown = []
        for k in idx[:per_rule]:
            p = pairs[outcome.ids[k]]
            shown.append({
                "id": p.id, "fate": str(sim.fate[k]), "weight": float(sim.weights[k]),
                "prompt": p.prompt[-1].content if p.prompt else "", "chosen": p.chosen, "rejected": p.rejected,
            })
        if shown:
            out.append({"rule": tag, "pairs": shown})
    return out


def run_lock(args) -> int:
    import sys

    from .lock import entry_from_table, write_entry

    try:
        prep = prepare(args.policy, data_path=args.data, limit=args.limit, strict=args.strict,
                       batch_size=args.batch_size, progress=sys.stderr.isatty(), update_lock=True)
    except PlanError as e:
        return _fail("lock", str(e))
    path = write_entry(args.policy, entry_from_table(prep.table, prep.data_source))
    print(f"wrote {path}")
    return 0
