"""Type stub of ``engine._native``, the PyO3 face of the native kernel (``native/``).

Each section lists one area's calls; every bulk call takes a batch and releases the GIL.
"""

from typing import Any

__version__: str

# --- aggregation kernel (native/python/src/kernel.rs) -------------------------------------
# Bridge and parity calls: values are converted once per call (None, bool, int within
# 64 bits, float, str, bytes). Bad function or kind names raise engine.errors.DefinitionError
# (a ValueError). Results are int (any size), float, str, bytes, bool, list or None.

def fold_finalize(
    function: str,
    kind: str,
    n: int | None,
    values: list[Any],
    orders: list[tuple[int, int, int]],
    parts: list[int],
) -> Any:
    """Fold ``values[i]`` at ``orders[i]`` into partial state ``parts[i]``, merge the partial
    states in ascending part order into an empty state, and finalize."""

def fold_merge_finalize(
    function: str,
    kind: str,
    n: int | None,
    values: list[Any],
    orders: list[tuple[int, int, int]],
    parts: list[int],
    merge_order: list[int],
) -> Any:
    """As ``fold_finalize``, merging the partial states in ``merge_order`` (distinct part ids
    covering every id in ``parts``)."""

# --- Avro decoding into columns (native/python/src/avro.rs) -------------------------------
# Columns: pyarrow arrays (int64, float64, bool, large_string, large_binary) for typed
# columns, lists of plain objects (dict for maps/records, list for arrays) for nested or
# mixed ones; a record field is flattened into "<field>.<sub>" columns. Errors raise
# engine.errors.DecodeError (a ValueError) naming the block, field path and byte offset.

def read_container(
    data: bytes, projection: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Decode an Avro object container file (codec null or deflate) whose schema is a record:
    ``(columns, header metadata)``; ``projection`` names the columns to build."""

def decode_datums(
    schema_json: str, datums: list[bytes], projection: list[str] | None = None
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Decode schemaless datums of record schema ``schema_json``: ``(columns, errors)``; a
    datum that fails adds no row and is listed in ``errors`` as ``(index, reason)``."""
