from pathlib import Path

from ethos.compiler.compile import compile_source
from ethos.compiler.names import LIBRARY_ROOT, METRICS
from ethos.compiler.resolve import load_library

REQUIRED = {"sycophancy", "flattery", "verbosity", "hedging", "refusal", "apology", "emoji",
            "markdown_heavy", "list_heavy", "certainty"}


def test_library_has_the_starter_concepts_with_descriptions():
    lib = load_library()
    assert REQUIRED <= set(lib.concepts)
    for c in lib.concepts.values():
        assert c.description and "\n" not in c.description
        if c.lens.kind == "metric":
            assert c.lens.metric in METRICS


def test_probe_exemplar_files_have_enough_contrast_pairs():
    import json

    for c in load_library().concepts.values():
        if c.lens.kind == "probe":
            rows = [json.loads(x) for x in (LIBRARY_ROOT / c.lens.file.path).read_text().splitlines() if x.strip()]
            assert sum(bool(r["positive"].strip()) for r in rows) >= 20
            assert sum(bool(r["negative"].strip()) for r in rows) >= 20


def test_library_concept_resolves_with_hash():
    plan = compile_source("block concept hedging;").plan
    (c,) = plan.concepts
    assert c.origin == "library" and c.lens.kind == "lexicon"
    assert c.lens.file.root == "library" and len(c.lens.file.sha256) == 64


def test_policy_file_shadows_library_and_paths_prefer_policy_folder(tmp_path):
    (tmp_path / "concepts").mkdir()
    (tmp_path / "concepts" / "hedging.txt").write_text("maybe\n")
    policy = tmp_path / "p.ethos"
    policy.write_text('concept hedging = lexicon "concepts/hedging.txt";\nblock concept hedging;\n')
    r = compile_source(policy.read_text(), str(policy))
    c = r.plan.concept("hedging")
    assert c.origin == "policy" and c.lens.file.root == "policy"
    import hashlib

    assert c.lens.file.sha256 == hashlib.sha256(b"maybe\n").hexdigest()


def test_relative_path_falls_back_to_library(tmp_path):
    policy = tmp_path / "p.ethos"
    r = compile_source('concept s = probe "concepts/sycophancy.jsonl";\nblock concept s;', str(policy))
    assert r.plan.concept("s").lens.file.root == "library"


def test_unknown_concept_did_you_mean():
    (d,) = compile_source("block concept sycofancy;").diagnostics
    assert d.code == "E201" and d.hint == "did you mean 'sycophancy'?"


def test_defaults_for_model_and_sae():
    plan = compile_source("keep concept emoji;").plan
    assert plan.model.name == "smollm2-135m-instruct" and plan.model.layer is None
    assert plan.sae.name == "default"


def test_concepts_are_sorted_and_unused_definitions_kept():
    plan = compile_source("concept z = metric words;\nkeep concept emoji;\nblock concept apology;").plan
    assert [c.name for c in plan.concepts] == ["apology", "emoji", "z"]


def test_library_root_is_inside_the_package_tree():
    assert (LIBRARY_ROOT / "concepts" / "library.toml").is_file()
    assert Path(LIBRARY_ROOT).name == "specs"
