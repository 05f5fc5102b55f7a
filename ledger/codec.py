"""The one canonical encoding for everything that is hashed or signed (DESIGN.md principle 3).

Canonical msgpack: maps have `str` keys in sorted order, integers use the shortest form
and fit in 64 bits, `bytes` are msgpack bin, strings are UTF-8, and there are no floats,
no extension types and nothing after the value. Decoding is strict: any input that would
not re-encode to exactly the same bytes is refused with a `CodecError`, so one value has
exactly one byte form and a peer cannot smuggle a second one past a hash.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from ledger.errors import CodecError

# 4 MiB: larger than any block we build (see node limits), small enough to bound memory.
DECODE_BYTES_MAX = 4 * 1024 * 1024
DEPTH_MAX = 32
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

# The JSON-like values the codec accepts.
Value = None | bool | int | bytes | str | list[Any] | dict[str, Any]


_SCALARS = (str, bytes, bool, type(None))
# What msgpack.unpackb may hand back that a canonical value can hold at a leaf.
_DECODED_LEAVES = frozenset({str, bytes, int, bool, type(None)})
_per_thread = threading.local()


def _packb(value: Any) -> bytes:
    """msgpack.packb(value, use_bin_type=True) through a reused Packer: about half the cost
    for small values. A Packer is not thread-safe (txs are decoded on verify threads too),
    so each thread has its own."""
    try:
        pack = _per_thread.pack
    except AttributeError:
        pack = _per_thread.pack = msgpack.Packer(use_bin_type=True).pack
    packed: bytes = pack(value)
    return packed


def _canonical(value: Any, depth: int) -> Any:
    # Exact-type dispatch first: this runs for every hashed or signed structure.
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise CodecError(f"integer {value} outside the 64-bit range")
        return value
    if depth >= DEPTH_MAX:
        raise CodecError(f"value nested deeper than {DEPTH_MAX} levels")
    if kind is dict:
        try:
            keys = sorted(value)
        except TypeError:
            keys = list(value)  # mixed key types: the loop below names the offender
        out = {}
        for key in keys:
            if type(key) is not str:
                raise CodecError(f"map key {key!r} is not a string")
            item = value[key]
            out[key] = item if type(item) in _SCALARS else _canonical(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [_canonical(item, depth + 1) for item in value]
    return _canonical_subclass(value, depth)


def _canonical_subclass(value: Any, depth: int) -> Any:
    """Subclasses of the allowed types (IntEnum, str enums…), and bytes-like views."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _canonical(int(value), depth)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return _canonical(dict(value), depth)
    if isinstance(value, list | tuple):
        return _canonical(list(value), depth)
    raise CodecError(f"type {type(value).__name__} cannot be encoded canonically")


def encode(value: Any) -> bytes:
    """Canonical bytes of `value`; raises CodecError for floats, non-str keys and the like."""
    # A plain int is the commonest value (nonces, balances): msgpack already packs it in
    # its shortest form, so only the range needs checking.
    if type(value) is int and INT_MIN <= value <= INT_MAX:
        return _packb(value)
    packed: bytes = msgpack.packb(_canonical(value, 0), use_bin_type=True)
    return packed


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack extension type {code} is not allowed")


def decode(data: bytes, *, max_bytes: int = DECODE_BYTES_MAX) -> Any:
    """Decode canonical bytes, or raise CodecError with the reason; never another exception."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise CodecError(f"input of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    if not data:
        raise CodecError("empty input")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_reject_ext,
        )
    except CodecError:
        raise
    except msgpack.ExtraData as exc:
        raise CodecError("trailing bytes after the value") from exc
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        raise CodecError(f"not valid msgpack: {exc}") from exc
    except RecursionError as exc:
        raise CodecError("value nested too deeply") from exc
    # Structure first (key order, leaf types, depth), then widths: re-packing the value as
    # decoded gives the input back only when every length and integer used its shortest
    # form and no map repeated a key. Together that is `encode(value) == data`, without
    # the copy `encode` makes to sort maps.
    kind = type(value)
    if kind is dict or kind is list:
        _check_decoded(value, 0)
    elif kind not in _DECODED_LEAVES:
        raise CodecError(f"type {kind.__name__} cannot be encoded canonically")
    if _packb(value) != data:
        raise CodecError("bytes are not in canonical form")
    return value


def _check_decoded(value: dict[str, Any] | list[Any], depth: int) -> None:
    """Refuse what unpackb accepts but `encode` never writes: unsorted or non-str map keys,
    floats and other leaf types, nesting of DEPTH_MAX containers or more."""
    if depth >= DEPTH_MAX:
        raise CodecError(f"value nested deeper than {DEPTH_MAX} levels")
    items: Any
    if type(value) is dict:
        keys = list(value)
        for key in keys:
            if type(key) is not str:
                raise CodecError(f"map key {key!r} is not a string")
        if keys != sorted(keys):
            raise CodecError("bytes are not in canonical form (map keys out of order)")
        items = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            _check_decoded(item, depth + 1)
        elif kind not in _DECODED_LEAVES:
            raise CodecError(f"type {kind.__name__} cannot be encoded canonically")


def decode_stored(data: bytes) -> Any:
    """Decode bytes this node itself wrote with `encode` (its state and store).

    They were canonical when written and LevelDB returns them intact, so the strict
    checks of `decode` (canonical re-encoding, float walk) are skipped on this hot path;
    every byte that comes from outside goes through `decode`.
    """
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                           ext_hook=_reject_ext)


def decode_map(data: bytes, *, max_bytes: int = DECODE_BYTES_MAX) -> dict[str, Any]:
    """Decode canonical bytes that must hold a map."""
    value = decode(data, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise CodecError(f"expected a map, got {type(value).__name__}")
    return value
