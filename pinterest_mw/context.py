"""What a web request tells us about the person behind an event.

A `RequestContext` is read once per request from an ASGI scope or a WSGI
environ: the client's IP address (through the trusted-proxy rules below),
user agent, Pinterest click id (`_epik` cookie or `epik` query parameter),
page URL and language. The sub-apps, the middleware and
`@track_conversion` all read it here, and `enrich_event_data` is the one
place where it is written into an event.

Client IP and proxies: the peer address of the connection is the client,
unless the peer is one of the configured trusted proxies (`TrustedProxies`;
`"unix"` trusts a peer on a unix socket). Only then are the `for=` hops of
`Forwarded` (RFC 7239), or else `X-Forwarded-For`, read right to left,
skipping further trusted proxies; the first untrusted hop is the client. A
hop that is not an IP address (`unknown`, an obfuscated identifier,
garbage) ends the walk with no client IP rather than a guess, and so does a
trusted peer that forwards no client address: its own address is not the
client's. The scheme the client used (for the page URL, and whether the
`_epik` cookie is `Secure`) is the server's, unless a trusted peer reports
it in `X-Forwarded-Proto` or `Forwarded: proto=`. Without trusted proxies
these headers are ignored: any browser can send them.

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
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple
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

UNIX_SOCKET = "unix"
"""The trusted-proxy entry that trusts a peer on a unix socket."""

_SCHEMES = frozenset({"http", "https"})

_MARKETING_PREFIX = "utm_"

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    Args:
        proxies: IP addresses or CIDR networks (`"10.0.0.0/8"`, `"::1"`),
            and `"unix"` to trust a peer on a unix socket (a server started
            with `uvicorn --uds` or `gunicorn --bind unix:...` behind nginx:
            such a peer has no IP address, so no network can name it).
            Empty means no proxy is trusted and forwarding headers are
            ignored.

    Only trust `"unix"` when the app listens on unix sockets alone, with
    only the proxy allowed to connect: the server reports no address for
    such a peer, and a peer without an address is what `"unix"` trusts.

    Raises:
        ConfigurationError: an entry is neither an address, a network nor
            `"unix"`.
    """

    __slots__ = ("_networks", "_unix")

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        networks: list[_IPNetwork] = []
        unix = False
        for entry in proxies:
            try:
                text = entry.strip()
                if text.lower() == UNIX_SOCKET:
                    unix = True
                    continue
                networks.append(ipaddress.ip_network(text, strict=False))
            except (AttributeError, TypeError, ValueError):
                raise ConfigurationError(
                    "trusted_proxies: an entry is not an IP address or network"
                    f" (or {UNIX_SOCKET!r})"
                ) from None
        self._networks = tuple(networks)
        self._unix = unix

    @classmethod
    def from_option(
        cls, value: TrustedProxies | Iterable[str] | None
    ) -> TrustedProxies:
        """Read a `trusted_proxies=` option as the sub-apps and middleware take it.

        A ready-made `TrustedProxies` is used as it is; None reads
        `PINTEREST_TRUSTED_PROXIES` (comma-separated, none when unset); any
        other value is a collection of addresses, networks and `"unix"`.

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
        return bool(self._networks) or self._unix

    def __repr__(self) -> str:
        entries = [str(net) for net in self._networks]
        if self._unix:
            entries.append(UNIX_SOCKET)
        return f"TrustedProxies({entries!r})"

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
        header values. The `for=` hops of `Forwarded` win when it has any;
        a trusted peer that forwards no client address gives None, not its
        own address.
        """
        headers = {"forwarded": forwarded, "x-forwarded-for": forwarded_for}
        found = {name: value for name, value in headers.items() if value}

        return self._resolve(peer, found).client_ip

    def _resolve(self, peer: str | None, headers: Mapping[str, str]) -> _Forwarding:
        """The client's address and scheme, from the peer or its forwarding headers.

        `headers` maps lower-case names to values; only `forwarded`,
        `x-forwarded-for` and `x-forwarded-proto` are read, and only when
        the peer is trusted.
        """
        peer_ip = _clean_ip(peer)
        if not self._trusts_peer(peer, peer_ip):
            return _Forwarding(peer_ip, None)

        hops, protocols = _forwarding_chain(headers)
        client = self._client_hop(hops)
        if client is None:
            return _Forwarding(None, _protocol(protocols, None, len(hops)))
        index, client_ip = client

        return _Forwarding(client_ip, _protocol(protocols, index, len(hops)))

    def _trusts_peer(self, peer: str | None, peer_ip: str | None) -> bool:
        if peer_ip is not None:
            return self.is_trusted(peer_ip)
        return self._unix and _is_unix_socket_peer(peer)

    def _client_hop(self, hops: list[str]) -> tuple[int, str] | None:
        """Where the client is in `hops`, and its IP: the first untrusted
        hop from the right, or the leftmost when all are trusted; None when
        there are no hops or one on the way is not an IP address."""
        for index in range(len(hops) - 1, -1, -1):
            hop_ip = _clean_ip(hops[index])
            if hop_ip is None:
                return None
            if not self.is_trusted(hop_ip) or index == 0:
                return index, hop_ip
        return None


class _Forwarding(NamedTuple):
    """What the peer, or the trusted proxies, say about the client."""

    client_ip: str | None
    scheme: str | None
    """`http` or `https` as a trusted proxy reports it; None: the server's."""


def _is_unix_socket_peer(peer: str | None) -> bool:
    """Whether a peer looks like a unix socket's: no address, or a path.

    ASGI servers report no client (uvicorn) or an empty one; WSGI servers
    an empty `REMOTE_ADDR`; some give the socket's path.
    """
    return not peer or peer.startswith(("/", "@", "\0"))


def _forwarding_chain(headers: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The forwarded-for hops and the protocols the proxies report.

    `Forwarded` (RFC 7239) when it names any `for=` hop, its `proto=`
    values aligned with those hops; else `X-Forwarded-For`, with
    `X-Forwarded-Proto` (or, without it, `Forwarded`'s `proto=` values).
    """
    forwarded = headers.get("forwarded")
    elements = _forwarded_elements(forwarded) if forwarded else []
    with_for = [element for element in elements if "for" in element]
    if with_for:
        return (
            [element["for"] for element in with_for],
            [element.get("proto", "") for element in with_for],
        )

    forwarded_for = headers.get("x-forwarded-for")
    hops = [hop.strip() for hop in forwarded_for.split(",")] if forwarded_for else []
    forwarded_proto = headers.get("x-forwarded-proto")
    if forwarded_proto:
        protocols = [value.strip() for value in forwarded_proto.split(",")]
    else:
        protocols = [element["proto"] for element in elements if "proto" in element]

    return hops, protocols


def _protocol(protocols: list[str], index: int | None, hop_count: int) -> str | None:
    """The scheme the client used, from the proxies' protocol list.

    A list as long as the hops is read at the client's position; a single
    value (a proxy that sets rather than appends) is taken as it is.
    """
    if index is not None and len(protocols) == hop_count:
        value = protocols[index]
    elif len(protocols) == 1:
        value = protocols[0]
    else:
        return None
    value = value.strip().strip('"').lower()

    return value if value in _SCHEMES else None


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
    # The scheme the client used, resolved with the client IP: the
    # middleware's cookie needs it, and the proxies are walked only once.
    _scheme: str = field(default="http", init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        present = [f.name for f in fields(self) if f.repr and getattr(self, f.name)]
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
        """
        headers = _scope_headers(scope.get("headers", ()))
        client = scope.get("client")
        peer = client[0] if client else None
        forwarding = (trusted_proxies or _NO_PROXIES)._resolve(peer, headers)
        scheme = forwarding.scheme or str(scope.get("scheme", "http"))
        if page == "url":
            page_url = _scope_url(scope, headers.get("host"), scheme)
        else:
            page_url = headers.get("referer")

        return cls._build(headers, forwarding.client_ip, page_url, scheme)

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
        peer = environ.get("REMOTE_ADDR")
        forwarding = (trusted_proxies or _NO_PROXIES)._resolve(
            peer if isinstance(peer, str) else None, headers
        )
        scheme = forwarding.scheme or str(environ.get("wsgi.url_scheme", "http"))
        if page == "url":
            page_url = _environ_url(environ, scheme)
        else:
            page_url = headers.get("referer")

        return cls._build(headers, forwarding.client_ip, page_url, scheme)

    @classmethod
    def _build(
        cls,
        headers: Mapping[str, str],
        client_ip: str | None,
        page_url: str | None,
        scheme: str,
    ) -> RequestContext:
        click_id = _epik_from_url(page_url) or _cookie(
            headers.get("cookie"), EPIK_COOKIE
        )
        context = cls(
            client_ip=client_ip,
            user_agent=headers.get("user-agent") or None,
            click_id=click_id,
            page_url=_page_url(page_url),
            language=_language(headers.get("accept-language")),
        )
        # Frozen, and kept out of the constructor: not a public field.
        object.__setattr__(context, "_scheme", scheme)

        return context


_NO_PROXIES = TrustedProxies()


def request_scheme(context: RequestContext) -> str:
    """The scheme the client used for the request `context` was read from.

    `http` or `https`: the server's (ASGI `scope["scheme"]`, WSGI
    `wsgi.url_scheme`), unless a trusted proxy says otherwise in
    `X-Forwarded-Proto` or `Forwarded: proto=`. `http` for a context not
    read from a request.
    """
    return context._scheme


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


def _forwarded_elements(header: str) -> list[dict[str, str]]:
    """The elements of a `Forwarded` header, as lower-case names to values.

    Quotes are removed; a name given twice in one element keeps its first
    value.
    """
    elements = []
    for element in header.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            name, equals, value = pair.strip().partition("=")
            if equals:
                pairs.setdefault(name.lower(), value.strip().strip('"'))
        elements.append(pairs)
    return elements


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
    b"x-forwarded-proto": "x-forwarded-proto",
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


def _scope_url(scope: Scope, host: str | None, scheme: str) -> str | None:
    if host is None:
        server = scope.get("server")
        if not server:
            return None
        host_name, port = server
        default_port = _DEFAULT_PORTS.get(scope.get("scheme", "http"))
        host = host_name if port in (None, default_port) else f"{host_name}:{port}"
    url = f"{scheme}://{host}{quote(scope_path(scope))}"
    query = scope.get("query_string", b"").decode("latin-1")

    return f"{url}?{query}" if query else url


def _environ_url(environ: Environ, scheme: str) -> str | None:
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
    if not host:
        return None
    query = environ.get("QUERY_STRING", "")
    url = f"{scheme}://{host}{quote(environ_path(environ))}"

    return f"{url}?{query}" if query else url
