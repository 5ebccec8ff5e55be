"""The architecture as a test: the import contracts of pyproject.toml hold (import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert res.stdout.count("KEPT") == 4


def test_the_numpy_core_loads_without_torch_plotly_or_streamlit() -> None:
    code = ("import sys; import polmap.io, polmap.process.preprocess, polmap.learn.sampling, polmap.learn.symmetry, polmap.analysis.walls, "
            "polmap.analysis.uncertainty, polmap.io.prediction_file, polmap.simulate, polmap.io.project; "
            "print(sorted(m for m in ('torch', 'plotly', 'streamlit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
