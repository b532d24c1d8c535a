"""URI schemes, read the way MLflow and HTTP clients read them.

A scheme is case-insensitive (RFC 3986 section 3.1): ``HTTP://host`` is an http URI, and MLflow
sends it to that server. A test such as ``uri.startswith("http://")`` then misses it, so every
scheme test in this package goes through :func:`uri_scheme`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mlflow_lite_plugin.core.errors import ArgumentError

HTTP_SCHEMES = frozenset({"http", "https"})


def uri_scheme(uri: str, argument: str = "uri") -> str:
    """The scheme of ``uri`` in lower case, '' for a plain path. A malformed URI (such as an
    unclosed IPv6 bracket) is an ArgumentError naming ``argument``: refused, never read as a path."""
    try:
        return urlsplit(uri).scheme  # urlsplit lower-cases the scheme
    except ValueError as exc:
        raise ArgumentError(argument, f"{uri!r} is not a valid URI ({exc})") from exc


def is_http_uri(uri: str, argument: str = "uri") -> bool:
    """Whether ``uri`` is an http or https URI, whatever the case of its scheme."""
    return uri_scheme(uri, argument) in HTTP_SCHEMES
