"""What a web request tells us about the person behind an event.

A `RequestContext` is read once per request from an ASGI scope or a WSGI
environ: the client's IP address (through the trusted-proxy rules below),
user agent, Pinterest click id (`_epik` cookie or `epik` query parameter),
page URL and language. The sub-apps, the middleware and
`@track_conversion` all read it here, and `enrich_event_data` is the one
place where it is written into an event.

Client IP and proxies: the peer address of the connection is the client,
unless the peer is one of the configured trusted proxies. Only then are
`Forwarded` (RFC 7239) or `X-Forwarded-For` read, right to left, skipping
further trusted proxies; the first untrusted hop is the client. A hop that is
not an IP address (`unknown`, an obfuscated identifier, garbage) ends the
walk with no client IP rather than a guess. Without trusted proxies these
headers are ignored: any browser can send them.

Reading a context never raises: a header or URL that cannot be parsed
(a malformed `Host`, `Referer` or address) is dropped, as if it were absent.

Privacy: a context holds raw personal data (IP address, user agent, click
id). It lives for one request in a `contextvars.ContextVar`, is never logged,
and its `repr` names only which parts are present. The page URL read from a
request keeps only the marketing parameters of its query string (`epik` and
`utm_*`): query strings often carry emails, tokens or reset links.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from .exceptions import ConfigurationError, UnusableValueError
from .hashing import USER_DATA_KEYS, normalize_ip_address

__all__ = [
    "RequestContext",
    "TrustedProxies",
    "current_context",
    "enrich_event_data",
    "use_context",
]

Scope = MutableMapping[str, Any]
Environ = Mapping[str, Any]
PageSource = Literal["url", "referer"]

EPIK_COOKIE = "_epik"
EPIK_QUERY_PARAMETER = "epik"

ENV_TRUSTED_PROXIES = "PINTEREST_TRUSTED_PROXIES"
"""Comma-separated trusted proxies, read when an option leaves them unset."""

_MARKETING_PREFIX = "utm_"

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    Args:
        proxies: IP addresses or CIDR networks (`"10.0.0.0/8"`, `"::1"`).
            Empty means no proxy is trusted and forwarding headers are
            ignored.

    Raises:
        ConfigurationError: an entry is neither an address nor a network.
    """

    __slots__ = ("_networks",)

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        networks: list[_IPNetwork] = []
        for entry in proxies:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except (AttributeError, TypeError, ValueError):
                raise ConfigurationError(
                    "trusted_proxies: an entry is not an IP address or network"
                ) from None
        self._networks = tuple(networks)

    @classmethod
    def from_option(
        cls, value: TrustedProxies | Iterable[str] | None
    ) -> TrustedProxies:
        """Read a `trusted_proxies=` option as the sub-apps and middleware take it.

        A ready-made `TrustedProxies` is used as it is; None reads
        `PINTEREST_TRUSTED_PROXIES` (comma-separated, none when unset); any
        other value is a collection of addresses or networks.

        .. versionadded:: 0.2

        Raises:
            ConfigurationError: a single string instead of a collection, or
                an entry that is neither an address nor a network.
        """
        if isinstance(value, TrustedProxies):
            return value
        if value is None:
            entries = os.environ.get(ENV_TRUSTED_PROXIES, "").split(",")
            return cls(entry for entry in entries if entry.strip())
        if isinstance(value, str):
            raise ConfigurationError(
                "trusted_proxies must be a list of IPs or networks"
            )
        return cls(value)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(net) for net in self._networks]!r})"

    def is_trusted(self, address: str) -> bool:
        """Whether `address` (a bare IP) is one of the trusted proxies."""
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_ip(
        self,
        peer: str | None,
        *,
        forwarded: str | None = None,
        forwarded_for: str | None = None,
    ) -> str | None:
        """The client's IP address, or `None` when it cannot be known.

        `peer` is the connection's remote address; `forwarded` and
        `forwarded_for` are the raw `Forwarded` and `X-Forwarded-For`
        header values. `Forwarded` wins when both are present.
        """
        peer_ip = _clean_ip(peer)
        if peer_ip is None or not self.is_trusted(peer_ip):
            return peer_ip

        if forwarded:
            hops = _forwarded_for_hops(forwarded)
        elif forwarded_for:
            hops = [hop.strip() for hop in forwarded_for.split(",")]
        else:
            return peer_ip

        client = peer_ip
        for hop in reversed(hops):
            hop_ip = _clean_ip(hop)
            if hop_ip is None:
                return None
            client = hop_ip
            if not self.is_trusted(hop_ip):
                break

        return client


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The parts of one web request that identify the person behind it.

    `page_url` is where the conversion happened: the request's own URL for a
    page view rendered by the app, or the `Referer` for an event posted by
    the browser from that page. Read from a request, it has no user info,
    no fragment, and of its query string only `epik` and `utm_*`.
    """

    client_ip: str | None = None
    user_agent: str | None = None
    click_id: str | None = None
    page_url: str | None = None
    language: str | None = None

    def __repr__(self) -> str:
        present = [f.name for f in fields(self) if getattr(self, f.name)]
        return f"RequestContext(present={present!r})"

    @classmethod
    def from_scope(
        cls,
        scope: Scope,
        *,
        trusted_proxies: TrustedProxies | None = None,
        page: PageSource = "url",
    ) -> RequestContext:
        """Read the context of an ASGI HTTP request; never raises.

        The epik query parameter of the page URL wins over the `_epik` cookie:
        it comes from the click that brought the visitor here.

        A header sent on several lines is read as WSGI servers join it:
        values in order, separated by `, ` (`; ` for `Cookie`), so that two
        `X-Forwarded-For` lines give the same client IP under ASGI and WSGI.

        .. versionchanged:: 0.2
           Repeated headers are joined; only the last one was read.
        """
        headers = _scope_headers(scope.get("headers", ()))
        client = scope.get("client")
        peer = client[0] if client else None
        if page == "url":
            page_url = _scope_url(scope, headers.get("host"))
        else:
            page_url = headers.get("referer")

        return cls._build(headers, peer, page_url, trusted_proxies)

    @classmethod
    def from_environ(
        cls,
        environ: Environ,
        *,
        trusted_proxies: TrustedProxies | None = None,
        page: PageSource = "url",
    ) -> RequestContext:
        """Read the context of a WSGI request, with the same rules as ASGI.

        The server has already joined a repeated header into one value
        (`Cookie` lines with `,` by some servers: both `;` and `,` separate
        cookies here, since a cookie value cannot hold a comma).
        """
        headers = _environ_headers(environ)
        if page == "url":
            page_url = _environ_url(environ)
        else:
            page_url = headers.get("referer")
        peer = environ.get("REMOTE_ADDR")

        return cls._build(
            headers, peer if isinstance(peer, str) else None, page_url, trusted_proxies
        )

    @classmethod
    def _build(
        cls,
        headers: Mapping[str, str],
        peer: str | None,
        page_url: str | None,
        trusted_proxies: TrustedProxies | None,
    ) -> RequestContext:
        proxies = trusted_proxies or _NO_PROXIES
        client_ip = proxies.client_ip(
            peer,
            forwarded=headers.get("forwarded"),
            forwarded_for=headers.get("x-forwarded-for"),
        )
        click_id = _epik_from_url(page_url) or _cookie(
            headers.get("cookie"), EPIK_COOKIE
        )

        return cls(
            client_ip=client_ip,
            user_agent=headers.get("user-agent") or None,
            click_id=click_id,
            page_url=_page_url(page_url),
            language=_language(headers.get("accept-language")),
        )


_NO_PROXIES = TrustedProxies()

_current: ContextVar[RequestContext | None] = ContextVar(
    "pinterest_mw_request_context", default=None
)


def current_context() -> RequestContext | None:
    """The context of the request being handled, if any."""
    return _current.get()


@contextmanager
def use_context(context: RequestContext | None) -> Iterator[RequestContext | None]:
    """Make `context` the current one for the duration of the block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def _spellings(wire_code: str) -> frozenset[str]:
    # Every key the hasher reads as this field, short aliases included
    # (`user_agent`): one left in the body would compete with the request's.
    names = {name for name, code in USER_DATA_KEYS.items() if code == wire_code}
    return frozenset(names | {wire_code})


_OVERRIDDEN_FIELDS = {
    wire_code: _spellings(wire_code)
    for wire_code in ("client_ip_address", "client_user_agent", "click_id")
}
_REQUEST_ONLY_FIELDS = frozenset({"client_ip_address", "client_user_agent"})


def enrich_event_data(
    data: Mapping[str, Any],
    context: RequestContext | None,
    *,
    from_browser: bool = False,
) -> dict[str, Any]:
    """Return a copy of raw event data with the request's context written in.

    What the request itself shows (client IP, user agent, click id) replaces
    whatever the event body claimed, since a browser can put anything in a
    body; the page URL and language fill in only when the event has none.
    `data` is not modified.

    With `from_browser=True` (the track endpoints) the body is not trusted
    at all for the client IP and user agent: they come from the request
    only, and are dropped when the request has none. A click id in the body
    is kept when the request carries none: a page on another site than the
    endpoint cannot send its first-party `_epik` cookie, and a cookie is no
    harder to forge than a body.

    .. versionchanged:: 0.2
       `from_browser` added.
    """
    enriched = dict(data)
    if context is None and not from_browser:
        return enriched
    context = context or RequestContext()

    user_data = enriched.get("user_data")
    user_data = dict(user_data) if isinstance(user_data, Mapping) else {}
    request_values = {
        "client_ip_address": context.client_ip,
        "client_user_agent": context.user_agent,
        "click_id": context.click_id,
    }
    for wire_code, value in request_values.items():
        if not value and not (from_browser and wire_code in _REQUEST_ONLY_FIELDS):
            continue
        for spelling in _OVERRIDDEN_FIELDS[wire_code]:
            user_data.pop(spelling, None)
        if value:
            user_data[wire_code] = value
    enriched["user_data"] = user_data

    if context.page_url and enriched.get("event_source_url") is None:
        enriched["event_source_url"] = context.page_url
    if context.language and enriched.get("language") is None:
        enriched["language"] = context.language

    return enriched


def _clean_ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return normalize_ip_address(value)
    except UnusableValueError:
        return None


def _forwarded_for_hops(header: str) -> list[str]:
    """The `for=` values of a `Forwarded` header, in order, quotes removed."""
    hops = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for":
                hops.append(value.strip().strip('"'))
    return hops


# The request headers a context reads: their ASGI names (lower-case bytes)
# and their WSGI environ keys. Nothing else is decoded.
_HEADER_NAMES: dict[bytes, str] = {
    b"accept-language": "accept-language",
    b"cookie": "cookie",
    b"forwarded": "forwarded",
    b"host": "host",
    b"referer": "referer",
    b"user-agent": "user-agent",
    b"x-forwarded-for": "x-forwarded-for",
}
_ENVIRON_KEYS = tuple(
    (name, "HTTP_" + name.upper().replace("-", "_")) for name in _HEADER_NAMES.values()
)


def _scope_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers a context reads, repeated ones joined as WSGI servers do."""
    found: dict[str, str] = {}
    for name, value in raw:
        key = _HEADER_NAMES.get(name)
        if key is None:
            # ASGI servers send lower-case names; anything else is looked up
            # again, lowered, rather than missed.
            if name.islower():
                continue
            key = _HEADER_NAMES.get(name.lower())
            if key is None:
                continue
        text = value.decode("latin-1")
        previous = found.get(key)
        if previous is not None:
            text = f"{previous}{'; ' if key == 'cookie' else ', '}{text}"
        found[key] = text

    return found


def _environ_headers(environ: Environ) -> dict[str, str]:
    """The headers a context reads, as the WSGI server handed them over."""
    found: dict[str, str] = {}
    for name, key in _ENVIRON_KEYS:
        value = environ.get(key)
        if isinstance(value, str):
            found[name] = value

    return found


def _cookie(header: str | None, name: str) -> str | None:
    """The value of cookie `name`, whether pairs are split by `;` or `,`."""
    if not header or name not in header:
        return None
    for pair in header.replace(",", ";").split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"') or None
    return None


def _epik_from_url(url: str | None) -> str | None:
    if not url or EPIK_QUERY_PARAMETER not in url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    for key, value in parse_qsl(query):
        if key == EPIK_QUERY_PARAMETER and value:
            return value
    return None


def _page_url(url: str | None) -> str | None:
    """`url` without user info, fragment or non-marketing query parameters.

    None when it is not an absolute URL or cannot be parsed.
    """
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    if not parts.scheme or not host:
        return None
    query = "&".join(
        pair for pair in parts.query.split("&") if _is_marketing_parameter(pair)
    )

    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def _is_marketing_parameter(pair: str) -> bool:
    name = unquote(pair.partition("=")[0].replace("+", " ")).lower()
    return name == EPIK_QUERY_PARAMETER or name.startswith(_MARKETING_PREFIX)


def _language(header: str | None) -> str | None:
    """The two-letter primary language of the first `Accept-Language` entry."""
    if not header:
        return None
    primary = header.split(",", 1)[0].split(";", 1)[0].strip().split("-", 1)[0]
    primary = primary.lower()
    return (
        primary
        if len(primary) == 2 and primary.isascii() and primary.isalpha()
        else None
    )


_DEFAULT_PORTS = {"http": 80, "https": 443}


def scope_path(scope: Scope) -> str:
    """The full path of an ASGI request, mount points included."""
    # Current servers and Starlette's Mount keep the full path in "path";
    # older servers left the mount point out of it, in "root_path" only.
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    return path if path.startswith(root_path) else root_path + path


def environ_path(environ: Environ) -> str:
    """The full path of a WSGI request (`SCRIPT_NAME` + `PATH_INFO`) as text."""
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    try:
        # PEP 3333 hands the path's bytes over as Latin-1 text.
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return path


def _scope_url(scope: Scope, host: str | None) -> str | None:
    if host is None:
        server = scope.get("server")
        if not server:
            return None
        host_name, port = server
        default_port = _DEFAULT_PORTS.get(scope.get("scheme", "http"))
        host = host_name if port in (None, default_port) else f"{host_name}:{port}"
    url = f"{scope.get('scheme', 'http')}://{host}{quote(scope_path(scope))}"
    query = scope.get("query_string", b"").decode("latin-1")

    return f"{url}?{query}" if query else url


def _environ_url(environ: Environ) -> str | None:
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
    if not host:
        return None
    query = environ.get("QUERY_STRING", "")
    scheme = environ.get("wsgi.url_scheme", "http")
    url = f"{scheme}://{host}{quote(environ_path(environ))}"

    return f"{url}?{query}" if query else url
