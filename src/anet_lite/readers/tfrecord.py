"""TFRecord framing (TensorBoard event files), read with every CRC checked.

A record is ``uint64 length | uint32 masked CRC-32C of length | data | uint32 masked
CRC-32C of data`` (little-endian). A flipped byte, a truncated file or an absurd length
is a ``LogFormatError`` naming the file and the record's byte offset, never a silent stop
(TensorBoard's own loader stops quietly at the first bad record) or a huge allocation.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import IO, Any, Iterator, Tuple

from .errors import LogFormatError

__all__ = ["MAX_RECORD", "tf_records"]

MAX_RECORD = 64 * 1024 * 1024  # bytes; a scalar event is ~50 bytes, an image a few MB


def tf_records(f: IO[bytes], path: Any) -> Iterator[Tuple[int, bytes]]:
    """(byte offset, data) of each record of the open binary file ``f``."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    st = os.fstat(f.fileno())
    size = st.st_size if stat.S_ISREG(st.st_mode) else None
    off = 0
    while True:
        head = f.read(12)
        if not head:
            return
        if len(head) < 12:
            raise _damage(path, off, "truncated (the file ends inside a record header)")
        n, crc = struct.unpack("<QI", head)
        if masked_crc32c(head[:8]) != crc:
            raise _damage(path, off, "CRC mismatch in the record length (damaged file)")
        if n > MAX_RECORD:
            raise _damage(path, off, f"record length {n:,} bytes is over {MAX_RECORD:,}")
        if size is not None and off + 16 + n > size:
            raise _damage(path, off, "truncated (the file ends inside this record)")
        data = f.read(n)
        tail = f.read(4)
        if len(data) < n or len(tail) < 4:
            raise _damage(path, off, "truncated (the file ends inside this record)")
        if masked_crc32c(data) != struct.unpack("<I", tail)[0]:
            raise _damage(path, off, "CRC mismatch in the record data (damaged file)")
        yield off, data
        off += 16 + n


def _damage(path: Any, offset: int, what: str) -> LogFormatError:
    return LogFormatError(f"record at byte offset {offset}: {what}", file=path)
