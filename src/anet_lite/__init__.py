"""anet-lite: detect, explain and record the moment a training run starts to fail.

Noise is trust. Accident is the only log that never lies.

The core imports NumPy only; ``anet_lite.torch`` and ``anet_lite.integrations`` are
optional and import their frameworks lazily.
"""

from .metrics import (
    entropy_rate,
    f_total,
    processivity,
    snapshot,
    theta_consistency,
    two_second_precursor,
)
from .monitor import Monitor
from .outputs import RunLog
from .policy import Action, Policy
from .tombstone import TombstoneLog, verify
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
