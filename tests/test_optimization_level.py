"""The engine against its reference at XLA's default optimization level.

The suite compiles at ``--xla_backend_optimization_level=0`` for speed
(tests/conftest.py), so this test runs two engine-vs-reference tests in a child
process with the default level, as production compiles are.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = ["tests/test_population.py::test_member_independent_of_neighbours",
         "tests/test_train.py::test_make_train_matches_reference_classification"]


def test_engine_matches_reference_at_default_optimization_level():
    root = Path(__file__).resolve().parent.parent
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_backend_optimization_level"))
    env = {**os.environ, "JAXTUNE_TEST_FAST_COMPILE": "0", "XLA_FLAGS": flags}
    check = "import os; assert 'optimization_level' not in os.environ.get('XLA_FLAGS', '')"
    args = ["-o", "addopts=", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", *TESTS]
    args = ["-o", "addopts=", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", *TESTS]
    proc = subprocess.run(
        [sys.executable, "-c", f"{check}; import pytest, sys; sys.exit(pytest.main({args!r}))"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout
