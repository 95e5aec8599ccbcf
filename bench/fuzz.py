"""Fuzz the compiler: generated and mutated policies, hostile paths, huge inputs. Reports the
uncaught exceptions (must be 0), the slowest inputs, the compile time of 1 MB policies and the
peak memory.

    .venv/bin/python bench/fuzz.py [--n 100000] [--seed 0] [--json] [--save-failures DIR]

Every input goes through what ``ethos check``/``compile``/``fmt`` do with it: compile, render the
diagnostics, dump them as JSON (this part is timed: the "slowest inputs"); when it compiles, the
plan's JSON round trip and ``fmt`` (idempotent, every comment kept in order, the same plan). Anything that raises is an uncaught exception;
an input that runs over ``--hang`` seconds counts as a hang. Policies are compiled as if they sat
in a scratch folder that holds the hostile files they name: a FIFO, a directory, a binary file, a
sparse 65 MiB file, a symbolic-link loop, a link out of the allowed folders.

The small form (``--n 300 --large-every 0 --quick``) runs in the test suite (tests/compiler/test_property.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import tracemalloc
from pathlib import Path

from ethos.compiler.compile import compile_source
from ethos.compiler.errors import MAX_PER_CODE, render_all
from ethos.compiler.fmt import format_source
from ethos.compiler.plan import dump_plan, load_plan

ROOT = Path(__file__).resolve().parents[1]
COMPILED = [0]  # inputs that compiled to a plan (and so went through the plan and fmt checks)
FULL_CHECKS_UP_TO = 100_000  # characters; a larger input that compiles gets the fmt check only

WORDS = ["policy", "model", "sae", "concept", "block", "dampen", "keep", "amplify", "reverse", "expect",
         "encourage", "discourage", "topic", "when", "above", "column", "cluster", "of", "count",
         "presence", "density", "via", "by", "layer", "metric", "lexicon", "probe", "features", "pool",
         "mean", "max", "pairs", "kept", "ess", "share", "alpha", "after", "before", "plan", "data", "filter",
         "relabel", "inoculation", "loss", "ablation", "steering", "penalty", "sycophancy", "refusal",
         "verbosity", "hedging", "length", "words", "x", "t", ";", ";", ";", "=", "==", ",", "<", ">=", "!=",
         "0", "0.5", "2.0", "-1", "1e999", "4095", "3", "12", '"t"', '"concepts/hedging.txt"', '"math"',
         "#c\n", "\n", '"', "\\", "\x00", "é", "@", "\t", "\ufeff", "\u202e", "\r\n"]
DEFINITIONS = [
    'policy "p";', 'model "m" layer 3;', "concept f = features 1, 2 pool max;",
    'concept s = lexicon "lex.txt" count;', 'concept p = probe "probe.jsonl" pool mean;',
    'topic cooking = lexicon "topics/cooking.txt" above 0.5;', 'topic m = column "category" == "math";',
    "topic t3 = cluster 3 of 12;",
]
RULES = [  # no two of them conflict
    "block concept sycophancy;", "amplify concept refusal by 2.0;", "dampen concept hedging by 0.5 via filter;",
    "block concept f via ablation;", "keep concept emoji;", "expect pairs kept >= 0.8;",
    "expect concept refusal share < 0.1;", 'block concept verbosity via inoculation "Be brief.";',
    "reverse concept apology via relabel;", "encourage concept warmth;", "discourage concept flattery by 0.5;",
    "discourage concept flattery by 0.5 via loss;", "block concept s;", "dampen concept p by 0.5 via steering 2;",
    "block concept sycophancy when topic cooking;", "keep concept refusal when topic m;",
    "amplify concept list_heavy by 1.5 when topic t3;", "expect concept refusal alpha > 0 before plan;",
    "expect ess >= 0.3;",
]
STATEMENTS = DEFINITIONS + RULES
HOSTILE_PATHS = ["a" * 5000, "a/" * 2500 + "x", "b" * 300, "../../../../etc/passwd", "/etc/passwd", "/dev/zero",
                 "/dev/stdin", "/proc/self/mem", "fifo", "dir", "binary.bin", "sparse.txt", "loop", "escape.txt",
                 "", " ", "nul\\u0000", "lex.txt", "probe.jsonl", "deep.jsonl", "empty.txt", "concepts/refusal.jsonl",
                 ".", "..", "/", "~/.ssh/id_rsa", "dir/", "\\\\server\\share", "C:\\x.txt", "lex.txt/", "é" * 200]


def scratch_folder(base: Path) -> Path:
    """A folder holding the hostile files the generated policies name."""
    d = base / "policy"
    d.mkdir()
    (d / "lex.txt").write_text("word\nanother phrase\n")
    (d / "empty.txt").write_text("# nothing\n")
    (d / "probe.jsonl").write_text('{"prompt": "p", "positive": "yes", "negative": "no"}\n')
    (d / "deep.jsonl").write_text("[" * 50_000 + "\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (d / "dir").mkdir()
    (d / "topics").mkdir()
    (d / "topics" / "cooking.txt").write_text("recipe\noven\n")
    os.mkfifo(d / "fifo")
    with open(d / "sparse.txt", "wb") as fh:
        fh.truncate(65 * 2**20)
    os.symlink(d / "loop", d / "loop")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink(outside / "secret.txt", d / "escape.txt")
    return d


# ---------------------------------------------------------------------------------------------
# Generators: each returns (kind, data) with data str or bytes


def soup(rng: random.Random):
    n = rng.randint(0, 60)
    seps = [" ", " ", "\n", "", "\t", "  # note\n"]
    return "soup", "".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n))


def valid(rng: random.Random):
    rules = rng.sample(RULES, rng.randint(1, 10))
    return "valid", "\n".join(DEFINITIONS + rules) + "\n"


def example(rng: random.Random):
    paths = sorted((ROOT / "specs" / "examples").glob("*.ethos")) + sorted(
        (ROOT / "tests" / "fixtures").glob("*/*.ethos"))
    return "example", rng.choice(paths).read_text(encoding="utf-8")


def mutate(rng: random.Random, text: str) -> str | bytes:
    for _ in range(rng.randint(1, 4)):
        if not text:
            text = rng.choice(STATEMENTS)
        i = rng.randrange(len(text) + 1)
        # line breaks and comments keep a policy valid (they exercise fmt); the rest break it
        op = rng.choice(["del", "ins", "dup", "swap", "break", "break", "break", "comment", "comment", "path",
                         "bytes", "case", "num"])
        if op == "del":
            text = text[:i] + text[i + rng.randint(1, 12):]
        elif op == "ins":
            text = text[:i] + rng.choice(WORDS + [" ", "\n"]) + text[i:]
        elif op == "dup":
            text = text[:i] + text[i:i + rng.randint(1, 40)] * rng.randint(1, 4) + text[i:]
        elif op == "swap":
            j = rng.randrange(len(text) + 1)
            a, b = sorted((i, j))
            text = text[:a] + text[b:] + text[a:b]
        elif op == "break":
            sp = text.find(" ", i)
            if sp >= 0:
                text = text[:sp] + rng.choice(["\n", "\n   ", "  # inside\n  ", "\n\n# own\n"]) + text[sp + 1:]
        elif op == "comment":  # at the end of a line, or on a line of its own
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
            note = "# " + " ".join(rng.choice(WORDS) for _ in range(3)).replace("\n", " ").replace("\r", " ")
            text = text[:j] + rng.choice(["  ", "\n"]) + note + text[j:]
        elif op == "path":
            q = text.find('"', i)
            r = text.find('"', q + 1) if q >= 0 else -1
            if r > q >= 0:
                text = text[:q + 1] + rng.choice(HOSTILE_PATHS) + text[r:]
        elif op == "bytes":
            raw = text.encode("utf-8", "surrogatepass")
            j = rng.randrange(len(raw) + 1)
            return raw[:j] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + raw[j:]
        elif op == "case":
            text = text[:i] + text[i:i + 8].upper() + text[i + 8:]
        else:
            text = text[:i] + rng.choice(["1e308", "-0", "99999999999999999999", "0.0000001", "nan", "inf",
                                          "1" * 400]) + text[i:]
    return text


def mutated(rng: random.Random):
    kind, text = rng.choice([valid, example])(rng)
    return "mutated-" + kind, mutate(rng, text)


def hostile_paths(rng: random.Random):
    lines = []
    for i in range(rng.randint(1, 6)):
        path = rng.choice(HOSTILE_PATHS)
        lens = rng.choice(["lexicon", "probe"])
        lines.append(f'concept c{i} = {lens} "{path}";\nblock concept c{i};')
    return "paths", "\n".join(lines)


def random_bytes(rng: random.Random):
    return "bytes", bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


def large(rng: random.Random):
    """A big input: ~1 MB of one statement repeated (one line or many), a huge features list, a
    huge token, deep garbage."""
    choice = rng.randrange(6)
    statement = rng.choice(STATEMENTS[:3])
    if choice == 0:
        return "1MB-one-line", (statement + " ") * (1_000_000 // (len(statement) + 1))
    if choice == 1:
        return "1MB-lines", (statement + "\n") * (1_000_000 // (len(statement) + 1))
    if choice == 2:
        return "features", "concept x = features " + ", ".join(str(rng.randrange(99)) for _ in range(60_000)) + ";"
    if choice == 3:
        return "long-name", "block concept " + "x" * 1_000_000 + ";"
    if choice == 4:
        return "garbage", "".join(rng.choice("(@$%!") for _ in range(500_000))
    return "1MB-distinct", "".join(f"concept c{i} = metric words;  # {i}\nblock concept c{i} via loss;\n"
                                   for i in range(14_500))


GENERATORS = [(soup, 3), (valid, 1), (mutated, 6), (hostile_paths, 1), (random_bytes, 1)]


def generate(rng: random.Random, large_every: int):
    if large_every and rng.randrange(large_every) == 0:
        return large(rng)
    gens, weights = zip(*GENERATORS)
    return rng.choices(gens, weights)[0](rng)


# ---------------------------------------------------------------------------------------------


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def exercise(data, path: str) -> tuple[float, float]:
    """What the policy commands do with an input; raises on any broken promise. Returns the CPU
    and wall seconds ``ethos check --json`` spends on it (compile, render, JSON); the checks of
    the plan and of fmt that follow are not timed."""
    c, t = time.process_time(), time.perf_counter()
    r = compile_source(data, path)
    assert r.plan is not None or any(d.is_error for d in r.diagnostics), "no plan and no error"
    render_all(r.diagnostics)
    dumped = json.dumps([d.model_dump(mode="json") for d in r.diagnostics])
    took = (time.process_time() - c, time.perf_counter() - t)
    if r.plan is not None:
        COMPILED[0] += 1
    per_code: dict[str, int] = {}
    for d in r.diagnostics:
        per_code[d.code] = per_code.get(d.code, 0) + 1
    assert max(per_code.values(), default=0) <= MAX_PER_CODE, "diagnostics not capped"
    assert len(dumped) < 400_000, f"diagnostics JSON of {len(dumped)} characters"
    if r.plan is None:
        return took
    if len(data) > FULL_CHECKS_UP_TO:  # a large input: fmt only (the full checks take minutes)
        once, diags = format_source(data, path)
        assert once is not None and format_source(once, path)[0] == once, "fmt is not idempotent"
        return took
    text = dump_plan(r.plan)
    assert dump_plan(load_plan(text)) == text, "plan JSON does not round-trip"
    once, diags = format_source(data, path)
    assert once is not None, f"compiles but does not format: {diags[:1]}"
    twice, _ = format_source(once, path)
    assert twice == once, "fmt is not idempotent"
    source = data.decode("utf-8") if isinstance(data, bytes) else data
    from ethos.compiler.parse import tokenize

    _, before = tokenize(source.removeprefix("\ufeff"))
    _, after = tokenize(once)
    assert [c[0].rstrip() for c in before] == [c[0] for c in after], "fmt lost or moved a comment"
    again = compile_source(once, path)
    strip = lambda p: json.loads(dump_plan(p).replace(p.source.sha256, ""))  # noqa: E731

    def meaning(p):
        doc = strip(p)
        for group in ("interventions", "keeps", "expectations", "concepts", "topics"):
            for item in doc.get(group, []):
                item.pop("span", None)
        doc["model"].pop("span", None), doc["sae"].pop("span", None)
        return doc

    assert again.plan is not None and meaning(again.plan) == meaning(r.plan), "fmt changed the meaning"
    return took


def run(n: int, seed: int, hang: float, large_every: int, save: Path | None, quiet: bool) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="ethos-fuzz-") as base:
        return _run(rng, n, seed, hang, large_every, save, quiet, str(scratch_folder(Path(base)) / "fuzz.ethos"))


def _run(rng, n, seed, hang, large_every, save, quiet, path) -> dict:
    compile_source("keep concept emoji;")  # warm the parser tables
    failures: list[dict] = []
    hangs: list[dict] = []
    slowest: list[tuple[float, str, int]] = []
    kinds: dict[str, int] = {}
    big: dict[str, list[float]] = {}
    slowest_total = (0.0, "", 0)
    old = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    try:
        for i in range(n):
            kind, data = generate(rng, large_every)
            kinds[kind] = kinds.get(kind, 0) + 1
            took = (0.0, 0.0)
            t0 = time.perf_counter()
            try:
                signal.setitimer(signal.ITIMER_REAL, hang)
                try:
                    took = exercise(data, path)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except Hang:
                hangs.append({"index": i, "kind": kind, "size": len(data)})
                took = (hang, hang)
            except BaseException as e:  # noqa: BLE001 - everything counts
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures.append({"index": i, "kind": kind, "size": len(data),
                                 "error": f"{type(e).__name__}: {str(e)[:300]}",
                                 "where": traceback.format_exc(limit=-3)[-1500:]})
                if save is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    blob = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
                    (save / f"failure-{i}.ethos").write_bytes(blob)
            total = time.perf_counter() - t0
            if total > slowest_total[0]:
                slowest_total = (total, kind, len(data))
            if kind.startswith("1MB"):
                big.setdefault(kind, []).append(took)
            slowest.append((*took, kind, len(data)))
            if len(slowest) > 50:
                slowest.sort(reverse=True)
                del slowest[10:]
            if not quiet and (i + 1) % 10_000 == 0:
                print(f"  {i + 1:,} inputs, {len(failures)} failures, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr)
    finally:
        signal.signal(signal.SIGALRM, old)
    wall = time.perf_counter() - start
    slowest.sort(reverse=True)
    return {
        "inputs": n, "seed": seed, "wall_s": round(wall, 1), "kinds": dict(sorted(kinds.items())),
        "compiled": COMPILED[0], "uncaught_exceptions": len(failures), "hangs": len(hangs), "failures": failures[:20],
        "slowest": [{"cpu_s": round(c, 3), "wall_s": round(w, 3), "kind": k, "size": z}
                    for c, w, k, z in slowest[:10]],
        "slowest_with_checks": {"seconds": round(slowest_total[0], 3), "kind": slowest_total[1],
                                "size": slowest_total[2]},
        "one_mb": {k: {"n": len(v), "max_cpu_s": round(max(c for c, _ in v), 3),
                       "max_wall_s": round(max(w for _, w in v), 3)} for k, v in sorted(big.items())},
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def one_mb_measurement() -> dict:
    """The issue's case, measured apart: ~1 MB, ~40,000 repeated rules, one line and many; wall and
    CPU time of compile + JSON of the diagnostics, and the memory the compile allocates at peak."""
    out = {}
    for name, text in (("one line", "block concept refusal; " * 40_000),
                       ("many lines", "block concept refusal;\n" * 40_000)):
        compile_source("keep concept emoji;")
        w, c = time.perf_counter(), time.process_time()
        r = compile_source(text, "big.ethos")
        payload = json.dumps([d.model_dump(mode="json") for d in r.diagnostics])
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        tracemalloc.start()
        compile_source(text, "big.ethos")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = {"bytes": len(text), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                     "diagnostics": len(r.diagnostics), "json_chars": len(payload),
                     "peak_alloc_mib": round(peak / 2**20, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="inputs to try (default 100,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang", type=float, default=60.0, help="seconds after which an input counts as a hang")
    ap.add_argument("--large-every", type=int, default=2000,
                    help="one input in this many is a large one (~1 MB); 0 for none")
    ap.add_argument("--quick", action="store_true", help="skip the separate 1 MB measurement")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--save-failures", type=Path, default=None, metavar="DIR")
    args = ap.parse_args(argv)
    report = run(args.n, args.seed, args.hang, args.large_every, args.save_failures, quiet=args.json)
    report["one_mb_policy"] = {} if args.quick else one_mb_measurement()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"inputs: {report['inputs']:,} (seed {args.seed}) in {report['wall_s']} s; by kind: {report['kinds']}")
        print(f"compiled to a plan (then checked: plan JSON round trip, fmt): {report['compiled']:,}")
        print(f"uncaught exceptions: {report['uncaught_exceptions']}; hangs (> {args.hang:g} s): {report['hangs']}")
        for f in report["failures"][:5]:
            print(f"  #{f['index']} {f['kind']} ({f['size']} chars): {f['error']}\n{f['where']}")
        print("slowest inputs by CPU time (compile + render + JSON, as `ethos check --json`):")
        for s in report["slowest"][:5]:
            print(f"  {s['cpu_s']:.3f} s CPU ({s['wall_s']:.3f} s wall)  {s['kind']}  {s['size']:,} chars")
        for name, m in report["one_mb_policy"].items():
            print(f"1 MB policy ({name}, {m['bytes']:,} bytes): {m['wall_s']} s wall, {m['cpu_s']} s CPU, "
                  f"{m['diagnostics']} diagnostics ({m['json_chars']:,} JSON chars), "
                  f"peak allocation {m['peak_alloc_mib']} MiB")
        w = report["slowest_with_checks"]
        print(f"slowest input with the plan and fmt checks: {w['seconds']} s ({w['kind']}, {w['size']:,} chars)")
        print(f"peak memory (RSS): {report['peak_rss_mib']} MiB; load average at the end: {report['load_average']} "
              f"on {os.cpu_count()} CPUs")
    return 0 if report["uncaught_exceptions"] == 0 and report["hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
