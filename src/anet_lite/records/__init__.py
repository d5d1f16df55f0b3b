"""Records of a run: what happened and what was done, on disk.

- ``tombstone``: the append-only, hash-chained tombstone log (``TombstoneLog``, ``verify``):
  every action taken and every forgetting decision, tamper-evident.
- ``outputs``: ``RunLog``, one flushed CSV / JSONL line per snapshot, and the chunked
  writers ``anet-lite analyze`` uses; ``write_atomic`` for files that must never be torn.
- ``forgetting``: dataset-scope forgetting decisions (``forget_dataset``) and the
  tombstone table ``anet-lite tombstones`` prints.

NumPy only, like the Monitor. The run folder that ``analyze`` writes and the report reads
is ``anet_lite.report.runfolder``.
"""

from .forgetting import forget_dataset, format_table
from .outputs import RunLog, write_atomic
from .tombstone import TombstoneLog, VerifyResult, read, verify

__all__ = [
    "RunLog",
    "TombstoneLog",
    "VerifyResult",
    "forget_dataset",
    "format_table",
    "read",
    "verify",
    "write_atomic",
]
