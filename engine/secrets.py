"""Secrets that cannot leak by accident: a redacting ``Secret`` holder and URL credential helpers.

A password read from ``skewless.yaml``, a ``SKEWLESS_*`` variable or a ``*_FILE`` lives in a
``Secret`` from the moment it is read until a connector hands it to its client library with
``reveal()``. ``str``, ``repr`` and ``format`` of a ``Secret`` print ``***``, so a config, a
settings object or an exception that holds one can be logged safely. ``Secret`` is not a
``str`` subclass on purpose: passing it where a ``str`` is expected fails loudly instead of
sending ``***`` (or the password) somewhere nobody meant it to go.

Example:
    >>> pw = Secret("hunter2")
    >>> f"password={pw}", repr(pw), pw.reveal()
    ('password=***', "Secret('***')", 'hunter2')
    >>> redact_url("redis://app:hunter2@cache:6379/0")
    'redis://app:***@cache:6379/0'
"""

from __future__ import annotations

import hmac
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "Secret", "redact_url", "split_url_credentials"]

REDACTED: Final = "***"

# query parameters that carry a credential in the URLs we accept (redis-py passes unknown
# query parameters to the connection, so ``?password=`` works there)
_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "secret", "token", "ssl_password"})


class Secret:
    """A credential whose ``str``, ``repr`` and ``format`` are ``***``; ``reveal()`` returns it.

    Equality compares in constant time; ``bool`` is False for an empty secret.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret holds a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call this only where a client library needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return format(REDACTED, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def split_url_credentials(url: str) -> tuple[str, str | None, Secret | None]:
    """``url`` without its ``user:password@`` part (and ``?password=``), the user and the password.

    The user and password are percent-decoded as redis-py decodes them. A URL without
    credentials comes back unchanged.

    Example:
        >>> split_url_credentials("redis://app:p%40ss@cache:6379/0")
        ('redis://cache:6379/0', 'app', Secret('***'))
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # malformed: leave it to the client library to name the problem
        return url, None, None
    user: str | None = None
    password: Secret | None = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        name, sep, pw = userinfo.partition(":")
        user = unquote(name) or None
        if sep and pw:
            password = Secret(unquote(pw))
        netloc = hostport
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k.lower() != "password"]
        for k, v in pairs:
            if k.lower() == "password" and v and password is None:
                password = Secret(v)
        if len(kept) != len(pairs):
            query = urlencode(kept)
    if netloc == parts.netloc and query == parts.query:
        return url, user, password
    return urlunsplit(parts._replace(netloc=netloc, query=query)), user, password


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and of credential query parameters as ``***``.

    The user name stays (it says which account was used); text that is not a URL comes
    back unchanged.

    Example:
        >>> redact_url("rediss://:pw@h:6380/1?password=pw&db=1")
        'rediss://:***@h:6380/1?password=***&db=1'
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # cannot be parsed: hide everything after the scheme
        return url.partition("://")[0] + "://" + REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        name, sep, pw = userinfo.partition(":")
        netloc = f"{name}:{REDACTED}@{hostport}" if sep and pw else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = "&".join(
                f"{k}={REDACTED}" if k.lower() in _SECRET_QUERY_KEYS else urlencode([(k, v)])
                for k, v in pairs
            )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
