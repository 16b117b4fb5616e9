"""Credentials in URIs: one helper that hides them wherever cmidd prints or writes a URI or a message.

A tracking URI may carry a user and password (``http://alice:s3cret@mlflow:5000``). cmidd never prints or writes
them: ``redact`` replaces the user-info part of every URI in a text with ``***``
(``http://***@mlflow:5000``), and ``split_credentials`` takes them out of a URI (the tracking wing hands them to
MLflow through its own ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` variables, so the URI that
travels on, into messages, files, run tags and Ray trials, holds none). ``RedactingFilter`` applies ``redact`` to
every log record a handler emits (the CLI installs it on its handler: cmidd's lines, MLflow's and urllib3's).

Example:
    >>> redact("error: cannot reach http://alice:s3cret@mlflow:5000/api")
    'error: cannot reach http://***@mlflow:5000/api'
    >>> split_credentials("http://alice:s3cret@mlflow:5000")
    ('http://mlflow:5000', 'alice', 's3cret')
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "RedactingFilter", "redact", "split_credentials"]

MASK = "***"
# scheme://userinfo@ : the user-info part (RFC 3986: no '/', '?', '#', '@' or whitespace) of any URI in a text
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")


def redact(text: object) -> str:
    """``text`` (made a ``str``) with the user-info part of every URI in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", str(text))


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(``uri`` without user-info, user or None, password or None); percent-escapes in them are decoded."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, unquote(password) if colon else None


class RedactingFilter(logging.Filter):
    """A handler filter that redacts credentials in URIs of every record (message and arguments merged first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:  # a traceback's text is formatted from the error
            exc = record.exc_info[1]
            if redact(exc) != str(exc):
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
