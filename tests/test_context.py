"""Reading a request's context: client IP, user agent, click id, page, language."""

from __future__ import annotations

from typing import Any

import pytest

from pinterest_mw.context import (
    ENV_TRUSTED_PROXIES,
    RequestContext,
    TrustedProxies,
    current_context,
    enrich_event_data,
    request_scheme,
    use_context,
)
from pinterest_mw.exceptions import ConfigurationError

PROXIES = TrustedProxies(["10.0.0.0/8", "::1"])


def scope(
    headers: dict[str, str] | None = None,
    *,
    peer: str = "203.0.113.9",
    path: str = "/thank-you",
    query: str = "",
    root_path: str = "",
) -> dict[str, Any]:
    return {
        "type": "http",
        "scheme": "https",
        "path": path,
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": [
            (name.lower().encode(), value.encode())
            for name, value in (headers or {}).items()
        ],
        "client": (peer, 51234),
        "server": ("shop.example", 443),
    }


def environ(headers: dict[str, str] | None = None, **extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/thank-you",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "203.0.113.9",
        "wsgi.url_scheme": "https",
        "HTTP_HOST": "shop.example",
    }
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    env.update(extra)
    return env


class TestClientIP:
    def test_untrusted_peer_is_the_client_whatever_the_headers_say(self) -> None:
        ip = PROXIES.client_ip("203.0.113.9", forwarded_for="198.51.100.1")

        assert ip == "203.0.113.9"

    def test_no_trusted_proxies_ignores_forwarding_headers(self) -> None:
        ip = TrustedProxies().client_ip("10.0.0.2", forwarded_for="198.51.100.1")

        assert ip == "10.0.0.2"

    def test_trusted_peer_passes_on_the_forwarded_client(self) -> None:
        ip = PROXIES.client_ip("10.0.0.2", forwarded_for="198.51.100.1")

        assert ip == "198.51.100.1"

    def test_spoofed_leftmost_entry_is_not_believed(self) -> None:
        """The first untrusted hop from the right is the client."""
        ip = PROXIES.client_ip(
            "10.0.0.2", forwarded_for="1.2.3.4, 198.51.100.1, 10.0.0.7"
        )

        assert ip == "198.51.100.1"

    def test_chain_of_only_trusted_hops_gives_the_leftmost(self) -> None:
        ip = PROXIES.client_ip("10.0.0.2", forwarded_for="10.1.1.1, 10.0.0.7")

        assert ip == "10.1.1.1"

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("198.51.100.1:8080", "198.51.100.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ],
    )
    def test_ports_are_stripped(self, header: str, expected: str) -> None:
        assert PROXIES.client_ip("10.0.0.2", forwarded_for=header) == expected

    @pytest.mark.parametrize("hop", ["unknown", "not-an-ip", "_hidden", "1.2.3.4, ,"])
    def test_invalid_hop_gives_no_client_ip(self, hop: str) -> None:
        assert PROXIES.client_ip("10.0.0.2", forwarded_for=hop) is None

    def test_forwarded_header_is_read_and_preferred(self) -> None:
        ip = PROXIES.client_ip(
            "::1",
            forwarded='for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"',
            forwarded_for="1.2.3.4",
        )

        assert ip == "2001:db8:cafe::17"

    def test_invalid_peer_gives_no_client_ip(self) -> None:
        assert PROXIES.client_ip("testclient") is None

    def test_bad_trusted_proxy_entry_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="trusted_proxies"):
            TrustedProxies(["10.0.0.0/8", "proxy.internal"])

    @pytest.mark.parametrize("forwarded", ["proto=https", "by=10.0.0.2;host=x"])
    def test_forwarded_without_for_leaves_x_forwarded_for_in_charge(
        self, forwarded: str
    ) -> None:
        """A `Forwarded` header naming no hop says nothing about the client."""
        ip = PROXIES.client_ip(
            "10.0.0.2", forwarded=forwarded, forwarded_for="198.51.100.1"
        )

        assert ip == "198.51.100.1"

    @pytest.mark.parametrize(
        "headers",
        [{}, {"forwarded": "proto=https"}, {"forwarded_for": ""}],
        ids=["none", "forwarded-without-for", "empty-x-forwarded-for"],
    )
    def test_trusted_peer_forwarding_no_client_gives_no_client_ip(
        self, headers: dict[str, str]
    ) -> None:
        """The proxy's own address is not the client's."""
        assert PROXIES.client_ip("10.0.0.2", **headers) is None


UNIX = TrustedProxies(["unix"])


class TestUnixSocketPeer:
    @pytest.mark.parametrize("peer", [None, "", "/run/shop/app.sock"])
    def test_unix_entry_believes_a_peer_on_a_unix_socket(
        self, peer: str | None
    ) -> None:
        ip = UNIX.client_ip(peer, forwarded_for="198.51.100.1, 10.0.0.7")

        assert ip == "10.0.0.7"

    @pytest.mark.parametrize("peer", [None, "/run/shop/app.sock"])
    def test_without_the_unix_entry_a_socket_peer_is_not_believed(
        self, peer: str | None
    ) -> None:
        assert PROXIES.client_ip(peer, forwarded_for="198.51.100.1") is None

    @pytest.mark.parametrize("peer", ["10.0.0.2", "testclient"])
    def test_unix_entry_trusts_no_network_peer(self, peer: str) -> None:
        ip = UNIX.client_ip(peer, forwarded_for="198.51.100.1")

        assert ip == ("10.0.0.2" if peer == "10.0.0.2" else None)

    def test_asgi_scope_without_client_reads_the_forwarded_client(self) -> None:
        """uvicorn --uds reports no client for a unix-socket peer."""
        request = scope({"X-Forwarded-For": "198.51.100.1"})
        request["client"] = None

        context = RequestContext.from_scope(request, trusted_proxies=UNIX)

        assert context.client_ip == "198.51.100.1"

    def test_unix_entry_is_read_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(ENV_TRUSTED_PROXIES, "UNIX, 10.0.0.0/8")

        proxies = TrustedProxies.from_option(None)

        assert proxies.client_ip(None, forwarded_for="198.51.100.1") == "198.51.100.1"
        assert repr(proxies) == "TrustedProxies(['10.0.0.0/8', 'unix'])"


def plain_http(request: dict[str, Any]) -> dict[str, Any]:
    """`request` as the server behind a TLS-terminating proxy sees it."""
    if "type" in request:
        return {**request, "scheme": "http", "server": ("shop.example", 80)}
    return {**request, "wsgi.url_scheme": "http"}


def read(request: dict[str, Any], proxies: TrustedProxies) -> RequestContext:
    if "type" in request:
        return RequestContext.from_scope(request, trusted_proxies=proxies)
    return RequestContext.from_environ(request, trusted_proxies=proxies)


def behind_proxy(kind: str, headers: dict[str, str], peer: str) -> dict[str, Any]:
    if kind == "asgi":
        return plain_http(scope(headers, peer=peer))
    return plain_http(environ(headers, REMOTE_ADDR=peer))


class TestForwardedScheme:
    @pytest.mark.parametrize("kind", ["asgi", "wsgi"])
    @pytest.mark.parametrize(
        "headers",
        [
            {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"},
            {"Forwarded": "for=198.51.100.1;proto=https"},
            {"Forwarded": "proto=https", "X-Forwarded-For": "198.51.100.1"},
        ],
        ids=["x-forwarded-proto", "forwarded", "forwarded-proto-only"],
    )
    def test_trusted_proxy_reports_the_clients_https(
        self, kind: str, headers: dict[str, str]
    ) -> None:
        context = read(behind_proxy(kind, headers, "10.0.0.2"), PROXIES)

        assert context.page_url == "https://shop.example/thank-you"

    @pytest.mark.parametrize("kind", ["asgi", "wsgi"])
    def test_untrusted_peer_cannot_claim_https(self, kind: str) -> None:
        headers = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}

        context = read(behind_proxy(kind, headers, "203.0.113.9"), PROXIES)

        assert context.page_url == "http://shop.example/thank-you"

    @pytest.mark.parametrize(
        ("headers", "scheme"),
        [
            (
                {
                    "X-Forwarded-For": "198.51.100.1, 10.0.0.7",
                    "X-Forwarded-Proto": "https, http",
                },
                "https",
            ),
            (
                {"Forwarded": "for=198.51.100.1;proto=https, for=10.0.0.7;proto=http"},
                "https",
            ),
            ({"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "ftp"}, "http"),
            (
                {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https, http"},
                "http",
            ),
        ],
        ids=["list-aligned", "forwarded-chain", "not-a-web-scheme", "list-unaligned"],
    )
    def test_protocol_of_the_clients_hop_is_read(
        self, headers: dict[str, str], scheme: str
    ) -> None:
        """A list is read at the client's position; one that cannot be, not at all."""
        context = read(behind_proxy("asgi", headers, "10.0.0.2"), PROXIES)

        assert context.page_url == f"{scheme}://shop.example/thank-you"


class TestFromScope:
    def test_reads_user_agent_language_and_page_url(self) -> None:
        context = RequestContext.from_scope(
            scope(
                {"User-Agent": "Mozilla/5.0", "Accept-Language": "fr-CA,fr;q=0.8"},
                query="utm_source=pin",
            ),
        )

        assert context == RequestContext(
            client_ip="203.0.113.9",
            user_agent="Mozilla/5.0",
            page_url="https://shop.example/thank-you?utm_source=pin",
            language="fr",
        )

    def test_click_id_comes_from_the_epik_cookie(self) -> None:
        context = RequestContext.from_scope(
            scope({"Cookie": "a=b; _epik=dj0yJnU9; c=d"})
        )

        assert context.click_id == "dj0yJnU9"

    def test_epik_query_parameter_wins_over_an_older_cookie(self) -> None:
        context = RequestContext.from_scope(
            scope({"Cookie": "_epik=old"}, query="epik=fresh")
        )

        assert context.click_id == "fresh"

    def test_page_from_referer_for_events_posted_by_the_browser(self) -> None:
        context = RequestContext.from_scope(
            scope({"Referer": "https://shop.example/p?epik=from-page"}),
            page="referer",
        )

        assert context.page_url == "https://shop.example/p?epik=from-page"
        assert context.click_id == "from-page"

    def test_forwarded_client_through_trusted_proxy(self) -> None:
        context = RequestContext.from_scope(
            scope({"X-Forwarded-For": "198.51.100.1"}, peer="10.0.0.2"),
            trusted_proxies=PROXIES,
        )

        assert context.client_ip == "198.51.100.1"

    def test_mounted_app_url_keeps_the_mount_point(self) -> None:
        context = RequestContext.from_scope(
            scope(path="/pinterest/track-event", root_path="/pinterest")
        )

        assert context.page_url == "https://shop.example/pinterest/track-event"

    @pytest.mark.parametrize("header", ["*", "", "123", "english"])
    def test_unusable_accept_language_gives_no_language(self, header: str) -> None:
        context = RequestContext.from_scope(scope({"Accept-Language": header}))

        assert context.language is None


class TestFromEnviron:
    def test_reads_the_same_parts_as_asgi(self) -> None:
        env = environ(
            {
                "User-Agent": "Mozilla/5.0",
                "Accept-Language": "de",
                "Cookie": "_epik=abc",
            },
            QUERY_STRING="utm_medium=social",
        )

        assert RequestContext.from_environ(env) == RequestContext(
            client_ip="203.0.113.9",
            user_agent="Mozilla/5.0",
            click_id="abc",
            page_url="https://shop.example/thank-you?utm_medium=social",
            language="de",
        )

    def test_forwarded_client_through_trusted_proxy(self) -> None:
        env = environ({"X-Forwarded-For": "198.51.100.1"}, REMOTE_ADDR="10.0.0.2")

        context = RequestContext.from_environ(env, trusted_proxies=PROXIES)

        assert context.client_ip == "198.51.100.1"


def raw_scope(headers: list[tuple[str, str]], **kwargs: Any) -> dict[str, Any]:
    """A scope whose headers keep their order and repetitions, as sent."""
    built = scope(**kwargs)
    built["headers"] = [(n.lower().encode(), v.encode()) for n, v in headers]
    return built


def raw_environ(headers: list[tuple[str, str]], **extra: str) -> dict[str, Any]:
    """An environ with repeated headers joined by `, `, as WSGI servers do."""
    joined: dict[str, list[str]] = {}
    for name, value in headers:
        joined.setdefault(name, []).append(value)
    return environ({name: ", ".join(vals) for name, vals in joined.items()}, **extra)


class TestRepeatedHeaders:
    # A proxy in front of HAProxy set the first line; HAProxy added the second.
    TWO_FORWARDED_FOR = (
        ("X-Forwarded-For", "198.51.100.1"),
        ("X-Forwarded-For", "10.0.0.3"),
    )

    def test_forwarded_for_lines_are_read_as_one_chain(self) -> None:
        context = RequestContext.from_scope(
            raw_scope(list(self.TWO_FORWARDED_FOR), peer="10.0.0.2"),
            trusted_proxies=PROXIES,
        )

        assert context.client_ip == "198.51.100.1"

    def test_asgi_and_wsgi_agree_on_repeated_headers(self) -> None:
        headers = [
            *self.TWO_FORWARDED_FOR,
            ("Cookie", "_epik=first"),
            ("Cookie", "theme=dark"),
            ("User-Agent", "Mozilla/5.0"),
        ]

        from_scope = RequestContext.from_scope(
            raw_scope(headers, peer="10.0.0.2"), trusted_proxies=PROXIES
        )
        from_environ = RequestContext.from_environ(
            raw_environ(headers, REMOTE_ADDR="10.0.0.2"), trusted_proxies=PROXIES
        )

        assert from_scope == from_environ
        assert from_scope.client_ip == "198.51.100.1"
        assert from_scope.click_id == "first"

    @pytest.mark.parametrize("position", [0, 1])
    def test_epik_cookie_is_found_on_any_cookie_line(self, position: int) -> None:
        """HTTP/2 clients may send each cookie on its own line."""
        lines = [("Cookie", "theme=dark; lang=fr"), ("Cookie", "_epik=abc")]
        if position == 0:
            lines.reverse()

        context = RequestContext.from_scope(raw_scope(lines))

        assert context.click_id == "abc"

    def test_cookie_lines_joined_with_commas_are_split(self) -> None:
        env = environ({"Cookie": "_epik=FIRST,other=1"})

        assert RequestContext.from_environ(env).click_id == "FIRST"

    def test_a_header_name_in_capitals_is_read_too(self) -> None:
        built = scope()
        built["headers"] = [(b"User-Agent", b"Mozilla/5.0")]

        assert RequestContext.from_scope(built).user_agent == "Mozilla/5.0"


class TestEnrichment:
    CONTEXT = RequestContext(
        client_ip="203.0.113.9",
        user_agent="Mozilla/5.0",
        click_id="epik-value",
        page_url="https://shop.example/p",
        language="en",
    )

    def test_request_values_replace_what_the_body_claims(self) -> None:
        data = {
            "event_name": "checkout",
            "user_data": {
                "ip_address": "1.1.1.1",
                "client_user_agent": "spoofed",
                "click_id": "spoofed",
                "em": "a@example.com",
            },
        }

        enriched = enrich_event_data(data, self.CONTEXT)

        assert enriched["user_data"] == {
            "em": "a@example.com",
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0",
            "click_id": "epik-value",
        }

    def test_page_url_and_language_fill_in_only_when_absent(self) -> None:
        data = {"event_source_url": "https://other.example/", "language": "fr"}

        enriched = enrich_event_data(data, self.CONTEXT)

        assert enriched["event_source_url"] == "https://other.example/"
        assert enriched["language"] == "fr"

    def test_missing_request_values_leave_the_body_alone(self) -> None:
        data = {"user_data": {"click_id": "from-body"}}

        enriched = enrich_event_data(data, RequestContext(client_ip="203.0.113.9"))

        assert enriched["user_data"] == {
            "click_id": "from-body",
            "client_ip_address": "203.0.113.9",
        }

    def test_input_is_not_modified(self) -> None:
        data: dict[str, Any] = {"user_data": {"em": "a@example.com"}}

        enrich_event_data(data, self.CONTEXT)

        assert data == {"user_data": {"em": "a@example.com"}}

    def test_browser_body_ip_and_user_agent_are_dropped_without_request_ones(
        self,
    ) -> None:
        """A track endpoint never forwards an IP or user agent a body claims."""
        data = {
            "user_data": {
                "ip_address": "1.1.1.1",
                "client_user_agent": "spoofed",
                "em": "a@example.com",
            }
        }

        enriched = enrich_event_data(data, RequestContext(), from_browser=True)

        assert enriched["user_data"] == {"em": "a@example.com"}

    def test_browser_body_values_are_dropped_even_without_a_context(self) -> None:
        data = {"user_data": {"client_ip_address": "1.1.1.1"}}

        enriched = enrich_event_data(data, None, from_browser=True)

        assert enriched["user_data"] == {}

    def test_browser_body_click_id_is_kept_when_the_request_has_none(self) -> None:
        data = {"user_data": {"click_id": "from-body"}}

        enriched = enrich_event_data(data, RequestContext(), from_browser=True)

        assert enriched["user_data"] == {"click_id": "from-body"}


class TestPageURL:
    """The page URL read from a request keeps only marketing parameters."""

    @pytest.mark.parametrize(
        ("referer", "expected"),
        [
            (
                "https://shop.example/p?email=a%40b.example&token=t#frag",
                "https://shop.example/p",
            ),
            (
                "https://shop.example/p?utm_source=pin&reset=abc&epik=e1",
                "https://shop.example/p?utm_source=pin&epik=e1",
            ),
            ("https://user:pw@shop.example/p", "https://shop.example/p"),
            (
                "https://shop.example/p?UTM_Campaign=x",
                "https://shop.example/p?UTM_Campaign=x",
            ),
        ],
    )
    def test_referer_keeps_only_marketing_parameters(
        self, referer: str, expected: str
    ) -> None:
        context = RequestContext.from_scope(scope({"Referer": referer}), page="referer")

        assert context.page_url == expected

    def test_request_url_drops_other_parameters(self) -> None:
        context = RequestContext.from_scope(
            scope(query="email=a%40b.example&utm_term=shoes")
        )

        assert context.page_url == "https://shop.example/thank-you?utm_term=shoes"

    def test_wsgi_request_url_drops_other_parameters(self) -> None:
        env = environ(QUERY_STRING="session=secret&epik=e2")

        context = RequestContext.from_environ(env)

        assert context.page_url == "https://shop.example/thank-you?epik=e2"
        assert context.click_id == "e2"

    def test_click_id_still_comes_from_the_page_url(self) -> None:
        context = RequestContext.from_scope(
            scope({"Referer": "https://shop.example/p?token=t&epik=e3"}),
            page="referer",
        )

        assert context.click_id == "e3"


class TestMalformedRequests:
    """Whatever a request carries, reading its context never raises."""

    @pytest.mark.parametrize(
        "referer",
        ["http://[::1/p?epik=x", "http://[bad]/?epik=x", "not a url", "/relative"],
    )
    def test_unparseable_referer_is_dropped(self, referer: str) -> None:
        context = RequestContext.from_scope(scope({"Referer": referer}), page="referer")

        assert (context.page_url, context.click_id) == (None, None)

    @pytest.mark.parametrize("host", ["[::1", "shop.example:99999999", "[zz]:1"])
    def test_malformed_host_gives_no_page_url(self, host: str) -> None:
        context = RequestContext.from_scope(
            scope({"Host": host, "User-Agent": "ua"}, query="epik=x")
        )

        assert (context.page_url, context.user_agent) == (None, "ua")

    def test_malformed_wsgi_host_gives_no_page_url(self) -> None:
        env = environ(HTTP_HOST="[::1", QUERY_STRING="epik=x")

        assert RequestContext.from_environ(env).page_url is None

    def test_wsgi_path_that_is_not_latin_1_is_read(self) -> None:
        env = environ(PATH_INFO="/caf\u00e9/\u20ac")

        context = RequestContext.from_environ(env)

        assert context.page_url == "https://shop.example/caf%C3%A9/%E2%82%AC"

    @pytest.mark.parametrize("peer", ["", "garbage", "[::1", "999.1.1.1"])
    def test_unusable_peer_address_gives_no_client_ip(self, peer: str) -> None:
        context = RequestContext.from_scope(scope(peer=peer), trusted_proxies=PROXIES)

        assert context.client_ip is None

    def test_unusable_forwarded_hop_gives_no_client_ip(self) -> None:
        context = RequestContext.from_scope(
            scope({"Forwarded": 'for="[::1"'}, peer="10.0.0.2"),
            trusted_proxies=PROXIES,
        )

        assert context.client_ip is None


class TestTrustedProxiesFromOption:
    def test_none_reads_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(ENV_TRUSTED_PROXIES, " 10.0.0.0/8 , ,::1")

        proxies = TrustedProxies.from_option(None)

        assert proxies.is_trusted("10.1.2.3")
        assert proxies.is_trusted("::1")

    def test_none_without_the_environment_trusts_nobody(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(ENV_TRUSTED_PROXIES, raising=False)

        assert not TrustedProxies.from_option(None)

    def test_ready_made_object_is_used_as_it_is(self) -> None:
        assert TrustedProxies.from_option(PROXIES) is PROXIES

    @pytest.mark.parametrize("value", ["10.0.0.1", ["not-an-ip"], [None]])
    def test_unusable_option_is_refused(self, value: Any) -> None:
        with pytest.raises(ConfigurationError):
            TrustedProxies.from_option(value)

    def test_a_bare_value_that_is_not_an_ip_is_not_trusted(self) -> None:
        assert PROXIES.is_trusted("garbage") is False


def test_repr_names_parts_without_their_values() -> None:
    text = repr(TestEnrichment.CONTEXT)

    assert "203.0.113.9" not in text
    assert "epik-value" not in text
    assert "client_ip" in text


def test_use_context_sets_and_restores_the_current_context() -> None:
    context = RequestContext(user_agent="ua")

    with use_context(context):
        inside = current_context()

    assert (inside, current_context()) == (context, None)


class TestScheme:
    """The scheme the client used, read once with the context (for the cookie)."""

    @pytest.mark.parametrize(
        ("server", "forwarded", "expected"),
        [
            ("https", {}, "https"),
            ("http", {}, "http"),
            ("http", {"x-forwarded-proto": "https"}, "https"),
            ("https", {"forwarded": "for=198.51.100.1;proto=http"}, "http"),
        ],
    )
    def test_asgi_and_wsgi_read_the_same_scheme(
        self, server: str, forwarded: dict[str, str], expected: str
    ) -> None:
        headers = {"x-forwarded-for": "198.51.100.1", **forwarded}
        asgi = RequestContext.from_scope(
            {**scope(headers, peer="10.0.0.2"), "scheme": server},
            trusted_proxies=PROXIES,
            page="referer",
        )
        wsgi = RequestContext.from_environ(
            environ(headers, REMOTE_ADDR="10.0.0.2", **{"wsgi.url_scheme": server}),
            trusted_proxies=PROXIES,
            page="referer",
        )

        assert (request_scheme(asgi), request_scheme(wsgi)) == (expected, expected)

    def test_the_scheme_is_no_field_of_the_context(self) -> None:
        """Not in its repr, its equality or its constructor."""
        context = RequestContext.from_scope(scope(), page="referer")

        assert request_scheme(context) == "https"
        assert request_scheme(RequestContext()) == "http"
        assert context == RequestContext(client_ip="203.0.113.9")
        assert repr(context) == "RequestContext(present=['client_ip'])"
