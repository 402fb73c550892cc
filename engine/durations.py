"""Window and hop durations: parse "30d"-style strings to milliseconds and pick default hops."""

from __future__ import annotations

import re

UNITS_MS: dict[str, int] = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
LIFETIME = "lifetime"
_DURATION = re.compile(r"^([1-9][0-9]*)([smhd])$")
# candidates for the default hop, largest first (DESIGN §3)
_DEFAULT_HOPS_MS = (86_400_000, 3_600_000, 300_000, 60_000, 10_000, 1_000)


def parse_duration(text: str) -> int:
    """Milliseconds of a duration such as ``"90s"``, ``"5m"``, ``"1h"``, ``"30d"``.

    Raises ValueError with the accepted form when ``text`` is not one.

    Example:
        >>> parse_duration("5m")
        300000
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like '5m' or '30d', got {text!r}")
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(
            f"expected a duration like '90s', '5m', '1h' or '30d' (units s, m, h, d), got {text!r}"
        )
    return int(match.group(1)) * UNITS_MS[match.group(2)]


def format_duration(ms: int) -> str:
    """The shortest exact unit form of ``ms`` (``86400000`` → ``"1d"``)."""
    for unit in ("d", "h", "m", "s"):
        if ms % UNITS_MS[unit] == 0:
            return f"{ms // UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def default_hop_ms(window_ms: int) -> int | None:
    """Largest of 1d, 1h, 5m, 1m, 10s, 1s dividing the window and at most a twelfth of it.

    Example:
        >>> [format_duration(default_hop_ms(parse_duration(w)) or 0) for w in ("30d", "7d", "1h", "10m")]
        ['1d', '1h', '5m', '10s']
    """
    for hop in _DEFAULT_HOPS_MS:
        if window_ms % hop == 0 and hop * 12 <= window_ms:
            return hop
    return None
