"""anet-lite: detect, explain and record the moment a training run starts to fail.

Packages: ``records`` (tombstones, run logs, forgetting), ``readers`` (training-log
formats), ``report`` (the HTML report and its run folder), ``cli``, ``torch`` (the Guard),
``integrations`` (Lightning, Hugging Face, sinks), ``merge`` (the merge scan) and
``image`` (image signatures). The core imports NumPy only; ``torch``, ``integrations``
and the extras import their frameworks lazily.
"""

from . import _moved
from .metrics import (
    entropy_rate,
    f_total,
    processivity,
    snapshot,
    theta_consistency,
    two_second_precursor,
)
from .monitor import Monitor
from .monitor.policy import Action, Policy
from .records.outputs import RunLog
from .records.tombstone import TombstoneLog, verify
from .verdict import Snapshot

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Monitor",
    "Policy",
    "RunLog",
    "Snapshot",
    "TombstoneLog",
    "__version__",
    "entropy_rate",
    "f_total",
    "processivity",
    "snapshot",
    "theta_consistency",
    "two_second_precursor",
    "verify",
]

# Modules that moved (anet_lite.tombstone -> anet_lite.records.tombstone, ...) stay
# importable under their old names, lazily: see ``_moved.MOVED``.
_moved.install()


def __getattr__(name: str) -> object:
    return _moved.moved_attribute(__name__, name)
