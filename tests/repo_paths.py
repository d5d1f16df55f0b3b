"""Paths the tests share, wherever a test file sits under tests/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
SRC = ROOT / "src"
EXAMPLES = ROOT / "examples"
BENCH_DETECTION = ROOT / "bench" / "detection"
# shared/ lies beside the checkout (here and in CI): public healthy training logs.
REAL_LOGS_DIR = ROOT.parent / "shared" / "data" / "real-logs"
