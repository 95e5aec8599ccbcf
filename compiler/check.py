"""Check: actions, factors, protocols and expectations. Every error in the file is collected.

Each factor action sets the factor k by which a concept's contribution to the learning signal is
multiplied (block 0, dampen f in (0, 1), keep 1, amplify f > 1, reverse -1); ``encourage`` and
``discourage`` set a target coefficient of a sign instead. A protocol realises it;
``plan.PROTOCOLS`` says which actions and lenses each can realise. One concept has one effect per
topic (the pairs outside every topic are one more scope); a ``when topic`` rule wins over an
unscoped one for the pairs in its topic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import ast as A
from .errors import Diagnostic, Diagnostics, did_you_mean
from .fmt import format_statement
from .plan import (
    ALL_LENSES,
    DEFAULT_PROTOCOL,
    DIRECTION_ACTIONS,
    INTERVENTION_CLASSES,
    MODEL_LENSES,
    PROTOCOLS,
    ConceptExpectation,
    EssExpectation,
    Keep,
    PairsExpectation,
    ProtocolInfo,
    as_span,
    rule_id,
)
from .resolve import Resolved

ACTIONS = ("block", "dampen", "keep", "amplify", "reverse", "encourage", "discourage")
FIXED_FACTOR = {"block": 0.0, "keep": 1.0, "reverse": -1.0}
__all__ = ["ALL_LENSES", "MODEL_LENSES", "PROTOCOLS", "DEFAULT_PROTOCOL", "check", "protocols_for"]

CONCEPT_METRICS = ("share", "alpha", "d", "q", "win_rate")
FATES = ("kept", "reweighted", "relabelled", "excluded")

# What a rule does to a concept's coefficient α: ("k", k) for a factor (α' = k·α), or
# ("target", direction, size) for encourage/discourage (α' = direction·(size or |α|)).
Effect = tuple


@dataclass
class Checked:
    resolved: Resolved
    interventions: list = field(default_factory=list)
    keeps: list[Keep] = field(default_factory=list)
    expectations: list = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    rule_ids: set[str] = field(default_factory=set)


def protocols_for(action: str, lens: str) -> list[str]:
    return [name for name, spec in PROTOCOLS.items() if action in spec.actions and lens in spec.lenses]


@dataclass
class _State:
    given: dict = field(default_factory=dict)  # (concept, scope) -> (effect, first rule giving it)
    seen: dict = field(default_factory=dict)  # (concept, protocol or "keep", scope) -> rule
    # the sign of α a policy states for the data (before plan) and for the result (after plan):
    # concept -> (sign, the expectation)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    warned: set = field(default_factory=set)  # (concept, scope) already looked at for direction warnings


def check(resolved: Resolved, partial: bool = False) -> Checked:
    """Check the rules and expectations. ``partial``: the file had syntax errors and these are the
    statements that parsed (no "no rules" warning then: the broken statement may be the rule)."""
    out = Checked(resolved)
    state = _State()
    for st in resolved.file.statements:
        if isinstance(st, A.ExpectConcept) and st.metric.text == "alpha":
            sign = _stated_sign(st)
            if sign is not None:
                phase = st.phase.when.text if st.phase else "after"
                (state.before if phase == "before" else state.after).setdefault(st.concept.text, (sign, st))
    n_rules = 0
    for st in resolved.file.statements:
        if isinstance(st, A.Rule):
            n_rules += 1
            _check_rule(st, resolved, out, state)
        elif isinstance(st, (A.ExpectConcept, A.ExpectPairs, A.ExpectEss)):
            _check_expectation(st, resolved, out)
    if n_rules == 0 and not partial:
        span = resolved.file.statements[0].span if resolved.file.statements else None
        out.diagnostics.warning("W301", "the policy has no rules", span,
                                "add a rule such as 'block concept sycophancy;'", file=resolved.file.path)
    return out


def _stated_sign(st: A.ExpectConcept) -> int | None:
    """The sign of α an ``expect concept x alpha OP v`` line states, if it states one."""
    op, v = st.op.text, st.value.value
    if not math.isfinite(v):
        return None
    if op == "<" and v <= 0 or op == "<=" and v < 0 or op == "==" and v < 0:
        return -1
    if op == ">" and v >= 0 or op == ">=" and v > 0 or op == "==" and v > 0:
        return 1
    return None


def _effect(rule: A.Rule, diags: Diagnostics) -> Effect | None:
    action = rule.action.text
    if action in FIXED_FACTOR:
        if rule.factor is not None:
            alt = {"block": "dampen concept {c} by 0.5", "keep": "keep concept {c}",
                   "reverse": "reverse concept {c}"}[action].format(c=rule.concept.text)
            diags.error("E301", f"'{action}' takes no factor", rule.factor.span,
                        f"'{action}' means k = {FIXED_FACTOR[action]:g}; for another factor write '{alt}'")
            return None
        return ("k", FIXED_FACTOR[action])
    if action in DIRECTION_ACTIONS:
        direction = DIRECTION_ACTIONS[action]
        if rule.factor is None:
            return ("target", direction, None)
        s = rule.factor.value
        if not (math.isfinite(s) and s > 0):
            diags.error("E303", f"size {rule.factor.text} is out of range for '{action}'", rule.factor.span,
                        f"'{action} concept {rule.concept.text} by s' sets the concept's coefficient to "
                        f"{'+' if direction > 0 else '-'}s, so s > 0; without 'by' it keeps the data's size")
            return None
        return ("target", direction, s)
    if rule.factor is None:
        example = "0.5" if action == "dampen" else "2.0"
        diags.error("E302", f"'{action}' needs a factor", rule.concept.span,
                    f"write '{action} concept {rule.concept.text} by {example};'")
        return None
    f = rule.factor.value
    ok = math.isfinite(f) and (0 < f < 1 if action == "dampen" else f > 1)
    if not ok:
        if action == "dampen":
            hint = "dampen takes a factor strictly between 0 and 1" + (
                "; for a factor above 1 use 'amplify'" if math.isfinite(f) and f > 1 else
                "; for 0 use 'block'" if f == 0 else "")
        else:
            hint = "amplify takes a factor above 1" + (
                "; for a factor below 1 use 'dampen'" if math.isfinite(f) and 0 < f < 1 else
                "; for a negative factor use 'reverse'" if math.isfinite(f) and f < 0 else "")
        diags.error("E303", f"factor {rule.factor.text} is out of range for '{action}'", rule.factor.span, hint)
        return None
    return ("k", f)


def _describe(effect: Effect) -> str:
    if effect[0] == "k":
        return f"gives k = {effect[1]:g}"
    _, direction, size = effect
    sign = "+" if direction > 0 else "-"
    return f"sets the coefficient to {sign}{'|α|' if size is None else f'{size:g}'}"


def _check_rule(rule: A.Rule, resolved: Resolved, out: Checked, state: _State) -> None:
    diags = out.diagnostics
    action = rule.action.text
    concept = resolved.concepts.get(rule.concept.text)
    effect = _effect(rule, diags)
    proto_name = rule.protocol.name.text if rule.protocol else None
    scope = rule.scope.topic.text if rule.scope is not None else None

    if action == "keep":
        if rule.protocol is not None:
            diags.error("E304", "'keep' takes no protocol", rule.protocol.span,
                        "'keep' acknowledges a concept and changes nothing; remove 'via ...'")
            return
    else:
        proto_name = proto_name or DEFAULT_PROTOCOL
        spec = PROTOCOLS.get(proto_name)
        if spec is None:
            diags.error("E305", f"unknown protocol '{proto_name}'", rule.protocol.name.span,
                        did_you_mean(proto_name, PROTOCOLS) or "protocols: " + ", ".join(PROTOCOLS))
            return
        arg = rule.protocol.arg if rule.protocol else None
        if not _check_arg(spec, proto_name, arg, rule, diags):
            return
        # a rule without `via` has no protocol token: point at the rule
        where = rule.protocol.name.span if rule.protocol else rule.span
        if action not in spec.actions:
            lens = concept.lens.kind if concept else "metric"
            can = protocols_for(action, lens)
            diags.error("E306", f"protocol '{proto_name}'{_defaulted(rule)} cannot realise '{action}'", where,
                        f"protocols that can {action} a {lens} concept: {', '.join(can)}")
            return
        if concept is not None and concept.lens.kind not in spec.lenses:
            can = protocols_for(action, concept.lens.kind)
            diags.error("E307",
                        f"protocol '{proto_name}'{_defaulted(rule)} needs a probe or features concept; "
                        f"'{concept.name}' is a {concept.lens.kind} concept",
                        where,
                        f"'{proto_name}' acts on a direction in the model; protocols that can {action} "
                        f"a {concept.lens.kind} concept: {', '.join(can)}")
            return

    if concept is None or effect is None or scope is not None and scope not in resolved.topics:
        return  # unknown concept or topic, or a bad factor: already reported

    name = concept.name
    first_given = state.given.get((name, scope))
    if first_given is not None and first_given[0] != effect:
        effect0, first = first_given
        where = f" in topic '{scope}'" if scope else ""
        diags.error("E308", f"concept '{name}' is given two different factors{where}",
                    rule.span,
                    f"here '{action}' {_describe(effect)}; at {first.span.line}:{first.span.column} "
                    f"'{first.action.text}' {_describe(effect0)}; one concept has one factor"
                    f"{' per topic' if scope else ''} (several protocols may realise it)")
        return
    state.given.setdefault((name, scope), (effect, rule))

    if action == "keep":
        key = (name, "keep", scope)
        if key in state.seen:
            diags.warning("W302", f"duplicate rule for '{name}'", rule.span,
                          f"the same rule is at {state.seen[key].span.line}:{state.seen[key].span.column}")
            return
        state.seen[key] = rule
        out.keeps.append(Keep(concept=name, scope=scope, span=as_span(rule.span)))
        return

    spec = PROTOCOLS[proto_name]
    key = (name, proto_name, scope)
    if key in state.seen:
        first = state.seen[key]
        same_arg = _arg_value(first.protocol) == _arg_value(rule.protocol)
        report = diags.warning if same_arg else diags.error
        defaulted = first.protocol is None or rule.protocol is None
        report("W302" if same_arg else "E309",
               f"{'duplicate' if same_arg else 'conflicting'} '{proto_name}' rule for '{name}'",
               rule.span, f"the other is at {first.span.line}:{first.span.column}"
               + (f"; a rule without 'via' uses the default protocol, '{DEFAULT_PROTOCOL}' "
                  f"(for importance weights write 'via data')" if defaulted else ""))
        return
    state.seen[key] = rule
    _direction_warnings(rule, name, effect, scope, resolved, state, diags)
    rid = rule_id(name, proto_name, out.rule_ids, scope)
    out.rule_ids.add(rid)
    fields = dict(rule_id=rid, concept=name, lens=concept.lens.kind, action=action, span=as_span(rule.span),
                  scope=scope, default_protocol=rule.protocol is None)
    if effect[0] == "k":
        fields["factor"] = effect[1]
    else:
        fields.update(factor=None, direction=effect[1], size=effect[2])
    if spec.argument is not None:
        fields[spec.argument] = _arg_value(rule.protocol)
    out.interventions.append(INTERVENTION_CLASSES[proto_name](**fields))


def _direction_warnings(rule: A.Rule, name: str, effect: Effect, scope: str | None, resolved: Resolved,
                        state: _State, diags: Diagnostics) -> None:
    """Warn where the compiler can tell that a rule pushes a concept the other way from what the
    policy says it wants (once per concept: the first rule that realises it)."""
    action = rule.action.text
    if (name, scope) in state.warned:
        return  # another protocol realising the same effect already had its say
    state.warned.add((name, scope))
    before = state.before.get(name) if scope is None else None
    if action == "amplify":
        prefer = resolved.prefer.get(name)
        if before is not None and before[0] < 0 and prefer != "less":
            at = before[1].span
            diags.warning("W303", f"'amplify' teaches even less {name}: the policy expects the data to teach "
                          f"less of it (α < 0, {at.line}:{at.column})", rule.span,
                          f"amplify multiplies the data's coefficient, so a negative α becomes "
                          f"{effect[1]:g}·α, more negative; for more {name} whatever the data says, write "
                          f"'encourage concept {name};'")
        elif prefer == "less" and not (before is not None and before[0] < 0):
            diags.warning("W305", f"'amplify' may teach more {name}, which the concept library marks as one "
                          f"to have less of", rule.span,
                          f"amplify multiplies what the data teaches: where the data rewards {name} (α > 0) it "
                          f"teaches more of it; for less {name} whatever the data says, write 'discourage concept "
                          f"{name};'; if the data teaches less {name} and you want even less, say so with "
                          f"'expect concept {name} alpha < 0 before plan;'")
    elif effect[0] == "target" and scope is None:
        after = state.after.get(name)
        if after is not None and after[0] != effect[1]:
            at = after[1].span
            diags.warning("W304", f"'{action}' makes {name}'s coefficient {'positive' if effect[1] > 0 else 'negative'}"
                          f"; the expectation at {at.line}:{at.column} wants it "
                          f"{'negative' if after[0] < 0 else 'positive'}", rule.span,
                          f"'{action} concept {name}' aims at α′ {'> 0' if effect[1] > 0 else '< 0'} whatever the "
                          f"data says; change the rule or the expectation")


def _defaulted(rule: A.Rule) -> str:
    """`` (the default)`` for a rule without ``via``: the protocol named in a message is one the
    user did not write."""
    return " (the default)" if rule.protocol is None else ""


def _arg_value(protocol: A.Protocol | None):
    if protocol is None or protocol.arg is None:
        return None
    return protocol.arg.value


def _check_arg(spec: ProtocolInfo, name: str, arg, rule: A.Rule, diags: list[Diagnostic]) -> bool:
    where = rule.protocol.span if rule.protocol else rule.span
    if spec.argument is None:
        if arg is not None:
            diags.error("E310", f"protocol '{name}' takes no argument", arg.span, f"write 'via {name}'")
            return False
        return True
    if arg is None:
        diags.error("E311", f"protocol '{name}' needs an argument", where, spec.argument_help)
        return False
    if spec.argument == "text":
        if not isinstance(arg, A.Str) or not arg.value.strip():
            diags.error("E312", f"protocol '{name}' needs a non-empty quoted instruction", arg.span, spec.argument_help)
            return False
        return True
    if not isinstance(arg, A.Num) or not math.isfinite(arg.value) or arg.value <= 0:
        diags.error("E313", f"protocol '{name}' needs a positive number", arg.span, spec.argument_help)
        return False
    return True


def _check_value(num: A.Num, diags: list[Diagnostic], fraction: bool) -> bool:
    if not math.isfinite(num.value):
        diags.error("E321", f"{num.text} is not a finite number", num.span, None)
        return False
    if fraction and not 0 <= num.value <= 1:
        diags.error("E322", f"{num.text} is not a fraction between 0 and 1", num.span,
                    "pairs and ess are fractions of the usable pairs: write 0.8 for 80%")
        return False
    return True


def _check_expectation(st, resolved: Resolved, out: Checked) -> None:
    diags = out.diagnostics
    text = format_statement(st)
    op = st.op.text
    if isinstance(st, A.ExpectConcept):
        metric = st.metric.text
        ok = True
        if metric not in CONCEPT_METRICS:
            diags.error("E323", f"unknown concept measure '{metric}'", st.metric.span,
                        did_you_mean(metric, CONCEPT_METRICS) or "measures: " + ", ".join(CONCEPT_METRICS))
            ok = False
        ok = _check_value(st.value, diags, fraction=metric in ("share", "q", "win_rate")) and ok
        if not ok or st.concept.text not in resolved.concepts:
            return
        phase = st.phase.when.text if st.phase else "after"
        out.expectations.append(ConceptExpectation(concept=st.concept.text, metric=metric, op=op,
                                                   value=st.value.value, phase=phase, text=text, span=as_span(st.span)))
    elif isinstance(st, A.ExpectPairs):
        fate = st.fate.text
        if fate not in FATES:
            diags.error("E324", f"unknown pair fate '{fate}'", st.fate.span,
                        did_you_mean(fate, FATES) or "fates: " + ", ".join(FATES))
            return
        if _check_value(st.value, diags, fraction=True):
            out.expectations.append(PairsExpectation(fate=fate, op=op, value=st.value.value, text=text, span=as_span(st.span)))
    else:
        if _check_value(st.value, diags, fraction=True):
            out.expectations.append(EssExpectation(op=op, value=st.value.value, text=text, span=as_span(st.span)))
