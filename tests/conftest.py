import os
import sys

# naive_seed.py (the seed's naive formulas, for defect tests) lives beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
