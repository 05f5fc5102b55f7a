"""Per-block (and per-transaction) write overlays over a read-only key-value base.

An overlay gives read-your-writes on top of its base, and is either merged into its parent
(`commit`) or thrown away (`discard`). The executor stacks one overlay per block on the
stored state and one per transaction on the block's overlay, so a failing transaction
changes nothing and a block's changes reach LevelDB in one batch.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol

from ledger.codec import decode_stored, encode
from ledger.errors import InvariantViolation, invariant

_DELETED = None  # a pending delete is stored as None in `writes`


class KeyValueReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]: ...


class MemoryKV:
    """A sorted in-memory key-value base (genesis building, tests, simulations)."""

    def __init__(self, items: dict[bytes, bytes] | None = None) -> None:
        self._data: dict[bytes, bytes] = dict(items or {})
        self._keys: list[bytes] = sorted(self._data)

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        start = bisect.bisect_left(self._keys, prefix)
        out: list[tuple[bytes, bytes]] = []
        for key in self._keys[start:]:
            if not key.startswith(prefix) or len(out) >= limit:
                break
            out.append((key, self._data[key]))
        return out

    def apply(self, writes: dict[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                if key in self._data:
                    del self._data[key]
                    self._keys.pop(bisect.bisect_left(self._keys, key))
            else:
                if key not in self._data:
                    bisect.insort(self._keys, key)
                self._data[key] = value

    def items(self) -> list[tuple[bytes, bytes]]:
        return [(key, self._data[key]) for key in self._keys]


class CachedReader:
    """Remembers what it read from a base that does not change while it is in use.

    The executor wraps the committed state in one for the span of a block: a token class
    record or a balance read by many transactions then costs one LevelDB get, not one per
    read. Same key, same bytes, so the cache cannot change any outcome; it must not
    outlive a write to the base.
    """

    def __init__(self, base: KeyValueReader) -> None:
        self._base = base
        self._values: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = self._base.get(key)
            return value

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self._base.scan(prefix, limit)


class Overlay:
    """Buffered writes over `base`; implements ledger.rules.StateView."""

    KEY_BYTES_MAX = 512
    VALUE_BYTES_MAX = 256 * 1024

    def __init__(self, base: KeyValueReader) -> None:
        self._base = base
        self.writes: dict[bytes, bytes | None] = {}
        self._closed = False

    # -- reads ------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self._base.get(key)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        # Ask the base for enough entries to cover the ones this overlay deletes.
        deleted = sum(1 for k, v in self.writes.items() if v is None and k.startswith(prefix))
        merged = dict(self._base.scan(prefix, limit + deleted))
        for key, value in self.writes.items():
            if key.startswith(prefix):
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        return sorted(merged.items())[:limit]

    def get_obj(self, key: bytes) -> Any | None:
        raw = self.get(key)
        return None if raw is None else decode_stored(raw)

    # -- writes -----------------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        # Messages are built only on failure: this runs for every write of every tx.
        if self._closed:
            raise InvariantViolation("write to a closed overlay")
        if not 0 < len(key) <= self.KEY_BYTES_MAX:
            raise InvariantViolation(f"state key length {len(key)} out of range")
        if len(value) > self.VALUE_BYTES_MAX:
            raise InvariantViolation(f"state value of {len(value)} bytes too large")
        self.writes[key] = value if type(value) is bytes else bytes(value)

    def put_obj(self, key: bytes, value: Any) -> None:
        self.put(key, encode(value))

    def delete(self, key: bytes) -> None:
        invariant(not self._closed, "write to a closed overlay")
        self.writes[key] = _DELETED

    # -- ending -----------------------------------------------------------------------
    def child(self) -> Overlay:
        return Overlay(self)

    def merge_into(self, parent: Overlay) -> None:
        """Fold this overlay's writes into the overlay it was stacked on."""
        invariant(not self._closed, "merge of a closed overlay")
        parent.writes.update(self.writes)
        self._closed = True

    def discard(self) -> None:
        self.writes.clear()
        self._closed = True
