"""anet-lite: detect, explain and record the moment a training run starts to fail.

Packages: ``records`` (tombstones, run logs, forgetting), ``readers`` (training-log
formats), ``report`` (the HTML report and its run folder), ``cli``, ``torch`` (the Guard),
``integrations`` (Lightning, Hugging Face, sinks), ``merge`` (the merge scan) and
``image`` (image signatures). The core imports NumPy only; ``torch``, ``integrations``
and the extras import their frameworks lazily.
"""

import sys as _sys

from .metrics import (
    entropy_rate,
    f_total,
    processivity,
    snapshot,
    theta_consistency,
    two_second_precursor,
)
from .monitor import Monitor
from .policy import Action, Policy
from .records import forgetting as _forgetting
from .records import outputs as _outputs
from .records import tombstone as _tombstone
from .records.outputs import RunLog
from .records.tombstone import TombstoneLog, verify
from .verdict import Snapshot

# The records modules stay importable under their earlier names (anet_lite.tombstone,
# anet_lite.outputs, anet_lite.forgetting): the very same module objects.
for _module in (_tombstone, _outputs, _forgetting):
    _name = _module.__name__.rsplit(".", 1)[1]
    _sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
del _name, _module

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
