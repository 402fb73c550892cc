"""engine.secrets: a Secret never prints itself; URLs lose their passwords, keep their users."""

from __future__ import annotations

import logging

import pytest

from engine.secrets import Secret, redact_url, split_url_credentials

PW = "s3cr3t-Pa55"


def test_secret_hides_itself_in_every_text_form(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret(PW)
    old_style = ("%s" % s, "{}".format(s))  # noqa: UP031, UP032 - the forms logging and old code use
    texts = [str(s), repr(s), f"{s}", f"{s!r}", f"{s:>20}", *old_style, str([s])]
    assert all(PW not in t for t in texts), texts
    assert str(s) == "***" and repr(s) == "Secret('***')"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("password is %s (%r)", s, s)
    assert PW not in caplog.text and "***" in caplog.text
    assert s.reveal() == PW


def test_secret_is_not_a_str_so_it_cannot_be_sent_by_mistake() -> None:
    s = Secret(PW)
    assert not isinstance(s, str)
    with pytest.raises(TypeError):
        PW.startswith(s)  # type: ignore[arg-type]  # the point: a Secret is not a str
    with pytest.raises(TypeError, match="Secret holds a str"):
        Secret(b"bytes")  # type: ignore[arg-type]  # the point: only str


def test_secret_equality_and_truth() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert Secret("a") != "a"  # never equal to the plain text
    assert hash(Secret("a")) == hash(Secret("a"))
    assert not Secret("") and Secret("x")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{PW}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://app:{PW}@h:6380/2", "rediss://app:***@h:6380/2"),
        ("redis://app@h:6379/0", "redis://app@h:6379/0"),  # a user alone is not a secret
        (f"redis://h:6379/0?password={PW}&db=3", "redis://h:6379/0?password=***&db=3"),
        (f"unix://app:{PW}@/tmp/redis.sock?db=1", "unix://app:***@/tmp/redis.sock?db=1"),
        (f"s3://key:{PW}@bucket/log", "s3://key:***@bucket/log"),
        ("/local/path/log", "/local/path/log"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert PW not in redact_url(url)


def test_redact_url_with_an_at_sign_in_the_password() -> None:
    # unquoted '@' in a password: the last '@' ends the userinfo, as urllib and redis-py read it
    assert redact_url("redis://u:p@ss@h:1/0") == "redis://u:***@h:1/0"


def test_split_url_credentials_moves_user_and_password_out() -> None:
    url, user, pw = split_url_credentials("redis://app:p%40ss%3Aw@cache:6379/4")
    assert (url, user) == ("redis://cache:6379/4", "app")
    assert pw is not None and pw.reveal() == "p@ss:w"  # percent-decoded like redis-py
    url, user, pw = split_url_credentials(f"rediss://h:6380/0?password={PW}&db=1")
    assert (url, user) == ("rediss://h:6380/0?db=1", None)
    assert pw is not None and pw.reveal() == PW
    assert split_url_credentials("redis://h:6379/0") == ("redis://h:6379/0", None, None)
    url, user, pw = split_url_credentials("redis://admin@h:6379/0")
    assert (url, user, pw) == ("redis://h:6379/0", "admin", None)
