"""fastws.routing: host and longest-prefix matching, strip_path, query strings.

The hypothesis test at the end compares the indexed Router with a brute-force reading
of the rules in the module docstring.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastws.config import load_config
from fastws.routing import Router, normalize_host


def router(*services: dict) -> Router:
    """Services written as the YAML file would hold them, validated by fastws.config."""
    return Router(load_config(None, {"services": list(services)}).services)


def service(name: str, *routes: dict, url: str | None = None) -> dict:
    return {"name": name, "url": url or f"ws://{name}:9000", "routes": list(routes)}


def hit(r: Router, path: str, host: str | None = None) -> tuple[str, str] | None:
    """(route name, upstream path), or None."""
    m = r.match(host, path)
    return None if m is None else (m.route.name, m.upstream_path)


class TestPaths:
    def test_catch_all(self):
        r = router(service("a", {"paths": ["/"]}))
        assert hit(r, "/") == ("a", "/")
        assert hit(r, "/x/y?z=1") == ("a", "/x/y?z=1")

    @pytest.mark.parametrize("path", ["/chat", "/chat/", "/chat/x", "/chat?x", "/chat/x/y?a=b&c"])
    def test_prefix_matches_at_segment_boundary(self, path):
        r = router(service("chat", {"paths": ["/chat"]}))
        assert r.match(None, path) is not None

    @pytest.mark.parametrize("path", ["/chatroom", "/cha", "/", "/x/chat", "/Chat"])
    def test_prefix_does_not_match(self, path):
        r = router(service("chat", {"paths": ["/chat"]}))
        assert r.match(None, path) is None

    def test_prefix_with_trailing_slash(self):
        r = router(service("chat", {"paths": ["/chat/"]}))
        assert r.match(None, "/chat/x") is not None
        assert r.match(None, "/chat/") is not None
        assert r.match(None, "/chat") is None
        assert r.match(None, "/chat?x") is None

    def test_longest_prefix_wins_regardless_of_order(self):
        r = router(
            service("root", {"paths": ["/"]}),
            service("a", {"paths": ["/a"]}),
            service("ab", {"paths": ["/a/b"]}),
        )
        assert hit(r, "/a/b/c")[0] == "ab"
        assert hit(r, "/a/b")[0] == "ab"
        assert hit(r, "/a/bc")[0] == "a"
        assert hit(r, "/a")[0] == "a"
        assert hit(r, "/abc")[0] == "root"

    def test_ties_keep_config_order(self):
        r = router(service("first", {"paths": ["/x"]}), service("second", {"paths": ["/x"]}))
        assert hit(r, "/x")[0] == "first"

    def test_several_paths_in_one_route(self):
        r = router(service("a", {"paths": ["/one", "/two/three"]}))
        assert hit(r, "/one/x") == ("a", "/x")
        assert hit(r, "/two/three") == ("a", "/")
        assert r.match(None, "/two") is None

    def test_non_origin_form_never_matches(self):
        r = router(service("a", {"paths": ["/"]}))
        assert r.match(None, "") is None
        assert r.match(None, "*") is None
        assert r.match(None, "ws://host/x") is None
        assert r.match(None, "?x") is None

    def test_no_routes(self):
        assert Router(()).match("a.com", "/") is None

    def test_path_compared_as_sent(self):
        r = router(service("a", {"paths": ["/chat"]}))
        assert r.match(None, "/ch%61t") is None


class TestHosts:
    def test_host_route_beats_equal_length_without_host(self):
        r = router(
            service("any", {"paths": ["/chat"]}),
            service("hosted", {"paths": ["/chat"], "hosts": ["chat.example.com"]}),
        )
        assert hit(r, "/chat", "chat.example.com")[0] == "hosted"
        assert hit(r, "/chat", "other.example.com")[0] == "any"
        assert hit(r, "/chat", None)[0] == "any"

    def test_longer_path_beats_host(self):
        r = router(
            service("hosted", {"paths": ["/"], "hosts": ["chat.example.com"]}),
            service("deep", {"paths": ["/chat"]}),
        )
        assert hit(r, "/chat/x", "chat.example.com")[0] == "deep"
        assert hit(r, "/other", "chat.example.com")[0] == "hosted"

    def test_host_only_route_beats_catch_all_path(self):
        """A route without paths counts as paths: [/]; with a host it beats a host-less '/'."""
        r = router(
            service("default", {"paths": ["/"]}),
            service("vhost", {"hosts": ["chat.example.com"]}),
        )
        assert hit(r, "/anything", "chat.example.com") == ("vhost", "/anything")
        assert hit(r, "/anything", "else.example.com")[0] == "default"

    def test_host_required(self):
        r = router(service("hosted", {"paths": ["/"], "hosts": ["a.com", "b.com"]}))
        assert hit(r, "/", "a.com")[0] == "hosted"
        assert hit(r, "/", "b.com")[0] == "hosted"
        assert r.match("c.com", "/") is None
        assert r.match(None, "/") is None
        assert r.match("", "/") is None

    @pytest.mark.parametrize(
        "header", ["chat.example.com", "Chat.Example.COM", "chat.example.com:8443", "chat.example.com.",
                   " chat.example.com ", "CHAT.EXAMPLE.COM.:80"]
    )
    def test_host_normalised(self, header):
        r = router(service("hosted", {"paths": ["/"], "hosts": ["chat.example.com"]}))
        assert r.match(header, "/") is not None

    def test_ipv6_host(self):
        r = router(service("v6", {"paths": ["/"], "hosts": ["[::1]"]}))
        assert r.match("[::1]:8000", "/") is not None
        assert r.match("[::1]", "/") is not None
        assert r.match("[::2]:8000", "/") is None

    def test_normalize_host(self):
        assert normalize_host("A.b:80") == "a.b"
        assert normalize_host("[::1]:80") == "[::1]"
        assert normalize_host("x.") == "x"
        assert normalize_host("::1") == "::1"  # not a valid Host; left alone

    def test_wildcard(self):
        r = router(service("wild", {"paths": ["/"], "hosts": ["*.example.com"]}))
        assert r.match("a.example.com", "/") is not None
        assert r.match("a.b.example.com:443", "/") is not None
        assert r.match("example.com", "/") is None
        assert r.match("aexample.com", "/") is None
        assert r.match("a.example.org", "/") is None

    def test_exact_beats_wildcard_beats_none(self):
        r = router(
            service("none", {"paths": ["/"]}),
            service("wild", {"paths": ["/"], "hosts": ["*.example.com"]}),
            service("wilder", {"paths": ["/"], "hosts": ["*.com"]}),
            service("exact", {"paths": ["/"], "hosts": ["chat.example.com"]}),
        )
        assert hit(r, "/", "chat.example.com")[0] == "exact"
        assert hit(r, "/", "other.example.com")[0] == "wild"
        assert hit(r, "/", "x.com")[0] == "wilder"
        assert hit(r, "/", "x.org")[0] == "none"

    def test_host_does_not_beat_a_longer_prefix(self):
        r = router(
            service("wild", {"paths": ["/a"], "hosts": ["*.example.com"]}),
            service("none", {"paths": ["/a/b"]}),
        )
        assert hit(r, "/a/b", "x.example.com")[0] == "none"


class TestUpstreamPath:
    @pytest.mark.parametrize(
        "service_path, prefix, strip, target, expected",
        [
            # strip_path: the prefix goes, the rest joins the service path
            ("/ws", "/chat", True, "/chat/x?a=1", "/ws/x?a=1"),
            ("/ws", "/chat", True, "/chat", "/ws"),
            ("/ws", "/chat", True, "/chat/", "/ws/"),
            ("/ws", "/chat", True, "/chat?a", "/ws?a"),
            ("/ws/", "/chat", True, "/chat", "/ws/"),
            ("/ws/", "/chat", True, "/chat/x", "/ws/x"),
            ("/", "/chat", True, "/chat/x", "/x"),
            ("/", "/chat", True, "/chat", "/"),
            ("/", "/chat", True, "/chat?q", "/?q"),
            ("/ws", "/chat/", True, "/chat/x", "/ws/x"),
            ("/ws", "/chat/", True, "/chat/", "/ws"),
            ("/", "/", True, "/x/y", "/x/y"),
            ("/ws", "/", True, "/x", "/ws/x"),
            ("/ws", "/", True, "/", "/ws"),
            # no strip_path: the whole request path joins the service path
            ("/ws", "/chat", False, "/chat/x", "/ws/chat/x"),
            ("/ws/", "/chat", False, "/chat", "/ws/chat"),
            ("/", "/chat", False, "/chat?q=1&r", "/chat?q=1&r"),
            ("/", "/", False, "/", "/"),
            ("/a/b", "/c", False, "/c/d?e", "/a/b/c/d?e"),
        ],
    )
    def test_join(self, service_path, prefix, strip, target, expected):
        r = router(service("s", {"paths": [prefix], "strip_path": strip}, url=f"ws://backend:9000{service_path}"))
        m = r.match(None, target)
        assert m is not None and m.upstream_path == expected

    def test_match_carries_service_and_route(self):
        r = router(
            service("a", {"name": "ra", "paths": ["/a"]}),
            service("b", {"name": "rb1", "paths": ["/b"]}, {"name": "rb2", "paths": ["/c"]}),
        )
        m = r.match("h", "/c/1")
        assert (m.service.name, m.route.name, m.upstream_path) == ("b", "rb2", "/1")
        assert (m.service.host, m.service.port) == ("b", 9000)

    def test_host_only_route_keeps_path(self):
        r = router(service("v", {"hosts": ["v.com"], "strip_path": True}, url="ws://backend/base"))
        assert hit(r, "/x?y", "v.com") == ("v", "/base/x?y")


# --------------------------------------------------------------------------------------
# The index against a brute-force reading of the rules

SEGMENTS = ["a", "b", "ab"]
HOSTS = ["x.com", "a.x.com", "b.a.x.com", "y.org"]


def reference(services, host, path):
    """Try every (route, prefix) pair; rank by (length, host rank, -config order)."""
    p, _, _ = path.partition("?")
    h = normalize_host(host) if host is not None else None
    best = None
    order = 0
    for s in services:
        for route in s.routes:
            for prefix in route.paths or ("/",):
                order += 1
                if not (p == prefix or (p.startswith(prefix) and (prefix.endswith("/") or p[len(prefix)] == "/"))):
                    continue
                if route.hosts:
                    ranks = [(2, 0) if hp == h else (1, len(hp)) for hp in route.hosts
                             if h is not None and (hp == h or (hp.startswith("*.") and h.endswith(hp[1:])))]
                    if not ranks:
                        continue
                    rank = max(ranks)
                else:
                    rank = (0, 0)
                key = (len(prefix), rank, -order)
                if best is None or key > best[0]:
                    best = (key, route.name)
    return None if best is None else best[1]


paths = st.lists(st.sampled_from(SEGMENTS), max_size=3).map(lambda segs: "/" + "/".join(segs)) | st.sampled_from(
    ["/", "/a/", "/ab/", "/a/b/"]
)
routes = st.fixed_dictionaries(
    {"paths": st.lists(paths, max_size=2)},
    optional={"hosts": st.lists(st.sampled_from(HOSTS + ["*.x.com", "*.a.x.com", "*.org"]), max_size=2)},
).filter(lambda r: r["paths"] or r.get("hosts"))


@given(
    services=st.lists(st.lists(routes, min_size=1, max_size=3), min_size=1, max_size=4),
    host=st.none() | st.sampled_from(HOSTS),
    path=paths,
    query=st.sampled_from(["", "?q", "?a=/b"]),
)
def test_router_agrees_with_reference(services, host, path, query):
    config = load_config(None, {"services": [
        {"name": f"s{i}", "url": "ws://u", "routes": [dict(r, name=f"s{i}r{j}") for j, r in enumerate(rs)]}
        for i, rs in enumerate(services)
    ]})
    m = Router(config.services).match(host, path + query)
    assert (None if m is None else m.route.name) == reference(config.services, host, path + query)
    if m is not None:
        assert m.upstream_path.startswith("/") and "//" not in m.upstream_path
        assert m.upstream_path.endswith(query)


def test_docs_example():
    """The routing example in docs/configuration.md (its routes 1-4 are s-0 .. s-3 here)."""
    r = router(service("s", {"paths": ["/"]}, {"paths": ["/chat"]},
                       {"paths": ["/chat"], "hosts": ["chat.example.com"]}, {"hosts": ["admin.example.com"]}))
    assert hit(r, "/chat/x", "chat.example.com")[0] == "s-2"
    assert hit(r, "/chat", "other.example.com")[0] == "s-1"
    assert hit(r, "/chat", "admin.example.com")[0] == "s-1"
    assert hit(r, "/", "admin.example.com")[0] == "s-3"
    assert hit(r, "/chatroom", "other.example.com")[0] == "s-0"
