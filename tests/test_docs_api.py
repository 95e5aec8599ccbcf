"""docs/api.md's end-to-end example runs as written: the one ```python block, with its three
settings at the top (MODEL, LIMIT, STEPS) set to a tiny model built here, 60 rows and 2 steps."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"


def example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert len(blocks) == 1, f"docs/api.md should have exactly one ```python block, has {len(blocks)}"
    return blocks[0]


def with_settings(code: str, **values: str) -> str:
    for name, value in values.items():
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
        assert n == 1, f"the example sets {name} {n} times (expected once, at its top)"
    return code


def build_tiny_model(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("runtime_fixtures", ROOT / "tests" / "runtime" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    return fixtures.build_tiny_model(folder)


def test_the_api_example_runs(tmp_path, monkeypatch, capsys):
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ETHOS_DTYPE": "float32",
                       "ETHOS_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
                       "WANDB_DISABLED": "true", "ETHOS_NO_PROGRESS": "1"}.items():
        monkeypatch.setenv(key, value)
    model = build_tiny_model(tmp_path / "tiny-model")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = with_settings(example(), MODEL=repr(str(model)), LIMIT="60", STEPS="2")
    namespace: dict = {"__name__": "docs_api_example"}
    capsys.readouterr()
    exec(compile(code, str(DOC), "exec"), namespace)

    out = capsys.readouterr().out
    assert out.startswith("Plan: ") and "0 failed." in out.splitlines()[0]
    run, applied, trained, report = (namespace[k] for k in ("run", "applied", "trained", "report"))
    assert run.document()["rows"]["input"] == 60 and run.failed == 0
    assert "block concept long via filter" in (work / "plan.html").read_text()
    assert (work / "out" / "apply" / "dataset.parquet").exists() and applied.dataset.num_rows > 0
    assert trained.record["settings"]["steps"] == 2 and (work / "out" / "run" / "train.json").exists()
    (model_report,) = report.document["models"]
    assert {r["concept"] for r in model_report["concepts"]} == {"long", "hedging"}
    assert report.document["prompts"] == 3


def signature(cls) -> str:
    """``Name(field=default, ...)`` of a settings dataclass, as docs/api.md writes it."""
    import dataclasses

    parts = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            parts.append(f"{f.name}={f.default!r}")
        elif f.default_factory is not dataclasses.MISSING:
            parts.append(f"{f.name}={f.default_factory()!r}")
        else:
            parts.append(f.name)
    return f"{cls.__name__}({', '.join(parts)})"


def test_the_documented_settings_and_functions_are_the_code():
    from ethos.runtime import api, settings

    text = DOC.read_text(encoding="utf-8")
    documented = {m.split("(", 1)[0]: " ".join(m.split()) for m in re.findall(r"\*\*`(\w+Settings\(.*?\))`\*\*", text, re.S)}
    for cls in (settings.DataSettings, settings.TrainSettings, settings.EvaluateSettings):
        assert documented.get(cls.__name__) == signature(cls), f"docs/api.md's {cls.__name__} is not the code's"
    for name in api.__all__:
        assert f"`{name}" in text, f"docs/api.md does not document api.{name}"
    for name in ("prepare", "dry_run", "apply_to", "train", "evaluate", "lock"):
        assert re.search(rf"`{name}\(", text), f"docs/api.md has no signature of api.{name}"


def call_signature(fn) -> str:
    """``name(a, b=default, *, c=default)`` as docs/api.md writes it (a default settings object as
    ``DataSettings()``)."""
    import dataclasses
    import inspect

    parts, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.default is p.empty:
            parts.append(p.name)
        elif dataclasses.is_dataclass(p.default) and p.default == type(p.default)():
            parts.append(f"{p.name}={type(p.default).__name__}()")
        else:
            parts.append(f"{p.name}={p.default!r}")
    return f"{fn.__name__}({', '.join(parts)})"


def test_the_documented_function_signatures_are_the_code():
    from ethos.runtime import api

    text = DOC.read_text(encoding="utf-8")
    for name in ("prepare", "dry_run", "apply_to", "train", "evaluate", "lock"):
        sig = call_signature(getattr(api, name))
        assert f"`{sig}`" in text, f"docs/api.md should show api.{name} as `{sig}`"
