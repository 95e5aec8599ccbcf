"""``bench/prediction.py --quick``: the prediction experiment end to end (train a vanilla and a
shaped run with ``ethos train``, ``ethos evaluate`` them, collect predicted against measured shifts,
draw the plot) at its smallest size on the default model, so the bench cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # the default model: minutes


@pytest.mark.timeout(1800)
def test_prediction_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "prediction.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "prediction.py"), "--quick", "--work", str(tmp_path / "w"),
                        "--json", str(out), "--plot", str(tmp_path / "p.svg")], cwd=ROOT, capture_output=True,
                       text=True, timeout=1750)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["config"]["train_pairs"] == 12 and doc["config"]["device"]
    names = {c["name"] for c in doc["concepts"]}
    assert names and names <= {"apology", "hedging", "list_heavy", "sycophancy", "verbosity"}
    assert doc["n"] == len(doc["concepts"]) == doc["vanilla"]["n"]
    shaped = {c["name"]: c for c in doc["shaped"]["concepts"]}
    for c in doc["concepts"]:  # vanilla predicts α; the shaped run k·α with its own rule's k
        assert c["factor"] == 1.0 and c["predicted"] == pytest.approx(c["alpha"])
        s = shaped.get(c["name"])
        if s is not None:
            k = {"verbosity": 0.0, "apology": 0.0, "hedging": 2.0, "list_heavy": 0.5}.get(c["name"], 1.0)
            assert s["factor"] == k and s["predicted"] == pytest.approx(k * s["alpha"])
            assert s["vs_vanilla"]["predicted"] == pytest.approx((k - 1.0) * s["alpha"])
    assert (tmp_path / "p.svg").read_text().startswith("<svg")
