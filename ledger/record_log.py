"""A durable, ordered log of opaque records in the node's LevelDB (consensus persistence).

The replica asks the node to persist records (its votes, view, checkpoints) before it
speaks; they live here under their own key prefix, numbered in append order, and every
append is one synced write batch. `replace` swaps the whole log atomically (compaction).
`write_group` applies several appends and replacements, in order, as ONE synced batch
(group commit: the node's writer thread collects whatever records are pending).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger.errors import invariant

_SEQ = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One step of a group: append `records`, or (replace=True) make them the whole log."""

    records: tuple[bytes, ...]
    replace: bool = False


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
        if records:
            self.write_group([RecordWrite(tuple(records))])

    def replace(self, records: Sequence[bytes]) -> None:
        self.write_group([RecordWrite(tuple(records), replace=True)])

    def write_group(self, steps: Sequence[RecordWrite]) -> None:
        """Apply `steps` in order as one synced batch: all of them survive a crash, or none.

        A replacement makes everything before it in the group moot, so only the last one
        and the appends after it are written (plus the deletion of every stored record).
        """
        last_replace = max((i for i, step in enumerate(steps) if step.replace), default=-1)
        live = steps[last_replace:] if last_replace >= 0 else steps
        if not any(step.records for step in live) and last_replace < 0:
            return
        batch = self._db.write_batch(sync=True)
        number = self._next
        if last_replace >= 0:
            for key in self._db.iterator(prefix=self._prefix, include_value=False):
                batch.delete(key)
            number = 0
        for step in live:
            for record in step.records:
                batch.put(self._prefix + _SEQ.pack(number), record)
                number += 1
        batch.write()
        self._next = number  # only once durable: a failed write leaves the numbering as is
