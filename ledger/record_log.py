"""A durable, ordered log of opaque records in the node's LevelDB (consensus persistence).

The replica asks the node to persist records (its votes, view, checkpoints) before it
speaks; they live here under their own key prefix, numbered in append order, and every
append is one synced write batch. `replace` swaps the whole log atomically (compaction).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ledger.errors import invariant

_SEQ = struct.Struct(">Q")


class RecordLog:
    def __init__(self, db: Any, prefix: bytes = b"cons/rec/") -> None:
        invariant(prefix.endswith(b"/"), "record log prefix must end with '/'")
        self._db = db
        self._prefix = prefix
        self._next = 0
        with db.iterator(prefix=prefix, reverse=True, include_value=False) as keys:
            for key in keys:
                self._next = _SEQ.unpack(key[len(prefix):])[0] + 1
                break

    def __len__(self) -> int:
        return sum(1 for _ in self._db.iterator(prefix=self._prefix, include_value=False))

    def load(self) -> list[bytes]:
        return [value for _, value in self._db.iterator(prefix=self._prefix)]

    def append(self, records: Sequence[bytes]) -> None:
        if not records:
            return
        batch = self._db.write_batch(sync=True)
        for record in records:
            batch.put(self._prefix + _SEQ.pack(self._next), record)
            self._next += 1
        batch.write()

    def replace(self, records: Sequence[bytes]) -> None:
        batch = self._db.write_batch(sync=True)
        for key in self._db.iterator(prefix=self._prefix, include_value=False):
            batch.delete(key)
        self._next = 0
        for record in records:
            batch.put(self._prefix + _SEQ.pack(self._next), record)
            self._next += 1
        batch.write()
