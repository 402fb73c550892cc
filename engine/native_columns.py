"""Assemble the columns ``engine._native`` decodes into pyarrow arrays, from raw buffers.

The native binding hands over, per column, its kind, a packed validity bitmap (LSB first,
``None`` when every cell is valid) and its buffers as numpy arrays or bytes that own the
decoded memory; ``pa.Array.from_buffers`` wraps them without a Python object per cell.
``value`` columns (arrays, maps, nested records, unions of several types) are already
Python lists of plain objects and pass through unchanged.

Example:
    >>> import numpy as np
    >>> cols = assemble(2, [("n", "int", None, (np.array([1, 2], dtype=np.int64),)),
    ...                     ("s", "str", b"\\x01", (np.array([0, 1, 1]), np.frombuffer(b"a", np.uint8))),
    ...                     ("v", "value", None, [[1], None])])
    >>> cols["n"].to_pylist(), cols["s"].to_pylist(), cols["v"]
    ([1, 2], ['a', None], [[1], None])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

__all__ = ["assemble"]

_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "str": pa.large_string(),
    "bytes": pa.large_binary(),
}


def assemble(rows: int, specs: Sequence[tuple[str, str, bytes | None, Any]]) -> dict[str, Any]:
    """Columns by name: a pyarrow array per typed column, a list per ``value`` column.

    Each spec is ``(name, kind, validity_bitmap, buffers)``; ``kind`` is one of ``int``,
    ``float``, ``bool``, ``str``, ``bytes`` (``buffers`` a tuple of buffer-protocol objects:
    data, or offsets then data) or ``value`` (``buffers`` the list of cells).
    """
    out: dict[str, Any] = {}
    for name, kind, validity, buffers in specs:
        if kind == "value":
            out[name] = buffers
            continue
        bufs = [None if validity is None else pa.py_buffer(validity)]
        bufs.extend(pa.py_buffer(b) for b in buffers)
        out[name] = pa.Array.from_buffers(_TYPES[kind], rows, bufs)
    return out
