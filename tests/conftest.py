import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The helpers beside the tests (naive_seed.py: the seed's naive formulas; torch_fixtures.py;
# repo_paths.py) import from any test folder.
sys.path.insert(0, HERE)
# The detection benchmark's modules (score, generate, baselines, ...) for the tests of
# bench/detection: imported by name, as the benchmark's own scripts do.
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench", "detection"))
