"""The Monitor: numbers -> words -> decisions, one training step at a time (NumPy only).

- ``Monitor`` (``_monitor``): ``update(loss, ...) -> Snapshot`` every step, ``decide``,
  ``mark``, ``state_dict``. Its rules live in ``_rules`` and ``_coherence``, its inputs
  are read by ``_signals``, its running levels are ``_stream``, its state is ``_state``.
- ``detectors``: the detectors it runs on every step, one small object each.
- ``causes``: the one registry of causes (status, first action, EN/JA words).
- ``policy``: ``Policy`` and ``Action``, what to do about a snapshot.
- ``explain``: the words for a snapshot.

``Snapshot`` itself is ``anet_lite.verdict`` (shared with the functional core,
``anet_lite.metrics``).
"""

from ..verdict import STATUSES, Snapshot
from ._monitor import RECOVER_MAX, Monitor
from .causes import CAUSES, Cause
from .explain import explain
from .policy import ACTIONS, Action, Policy

__all__ = [
    "ACTIONS",
    "CAUSES",
    "RECOVER_MAX",
    "STATUSES",
    "Action",
    "Cause",
    "Monitor",
    "Policy",
    "Snapshot",
    "explain",
]
