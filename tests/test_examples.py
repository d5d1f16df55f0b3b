"""The README's examples run as written (each in a fresh interpreter)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::UserWarning", os.path.join(ROOT, "examples", name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quickstart_runs_on_a_real_run():
    out = run_example("quickstart.py").split()
    phi, F, alert, z = float(out[0]), float(out[1]), out[2], float(out[3])
    assert 0.6 <= phi <= 1.0  # a healthy run against a known-good reference
    assert alert == "False" and z < 2.5
    assert -1.7 <= F <= 1.7


def test_seed_pytorch_hook_runs_as_written():
    pytest.importorskip("torch")
    out = run_example("seed_pytorch_hook.py")
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert len(lines) == 11  # steps 100, 120, ..., 300
    thetas = [float(re.search(r"θ=([0-9.]+)", ln).group(1)) for ln in lines]
    assert all(0.0 <= t <= 1.0 for t in thetas)
