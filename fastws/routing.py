"""Choose the service for a handshake: host and longest path prefix, as Kong does (SPEC §2).

Rules, for a request with ``Host`` *h* and path *p*:

* A route matches when its ``hosts`` are empty or contain *h* (lower-cased, port and
  trailing dot removed; ``*.example.com`` matches any name ending in ``.example.com``
  but not ``example.com`` itself), and its ``paths`` contain a prefix of *p*. A route
  with no ``paths`` behaves as ``paths: [/]``.
* Among matching routes, the longest matching path prefix wins. At equal length an
  exact host beats a wildcard host (the longer wildcard first), which beats no host;
  then the route that comes first in the file wins.

Prefixes end at a segment boundary: ``/chat`` matches ``/chat``, ``/chat/x`` and
``/chat?x`` but not ``/chatroom``; ``/chat/`` matches ``/chat/x`` but not ``/chat``.
Kong and nginx compare plain string prefixes, where ``/chat`` also takes ``/chatroom``
and, with ``strip_path``, sends it upstream as ``room``. That is almost never meant,
and a route meant to catch ``/chatroom`` can say so; Envoy's ``path_separated_prefix``
draws the same line. The path is compared as sent, without percent-decoding.

With ``strip_path`` the matched prefix is removed (the rest keeps a leading ``/``) and
the rest is appended to the service URL's path without doubling the slash; an empty
rest gives the service path itself, as in Kong. The query string is kept::

    service ws://b/ws, route /chat, strip:  /chat/x?a=1 -> /ws/x?a=1,  /chat -> /ws
    service ws://b/ws, route /chat, no strip:  /chat/x -> /ws/chat/x

Matching costs a few dict lookups per path segment: the table is built once per
config, keyed by host and then by exact prefix, and the request path's segment
boundaries are probed from the longest prefix down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .config import Route, Service

__all__ = ["Match", "Router", "normalize_host"]


class Match(NamedTuple):
    """The route chosen for a request and the path (with query) to ask the upstream for."""

    service: Service
    route: Route
    upstream_path: str


class _Target(NamedTuple):
    service: Service
    route: Route
    strip_len: int  # characters to remove from the request path; 0 without strip_path
    base: str  # the service path without its trailing slash ("" for "/")


def normalize_host(host: str) -> str:
    """``Host`` header value as routes compare it: lower case, no port, no trailing dot."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end > 0:
            h = h[: end + 1]
    elif h.count(":") == 1:
        h = h[: h.index(":")]
    if h.endswith("."):
        h = h[:-1]
    return h


class Router:
    """The routing table for one configuration; build once, then :meth:`match` per handshake."""

    __slots__ = ("_exact", "_wildcard", "_any")

    def __init__(self, services: Iterable[Service]) -> None:
        # host -> prefix -> target. The first route in config order keeps a slot.
        self._exact: dict[str, dict[str, _Target]] = {}
        self._wildcard: dict[str, dict[str, _Target]] = {}  # keyed by ".example.com"
        self._any: dict[str, _Target] = {}
        for service in services:
            base = service.path.rstrip("/")
            for route in service.routes:
                tables = []
                for host in route.hosts:
                    if host.startswith("*."):
                        tables.append(self._wildcard.setdefault(host[1:], {}))
                    else:
                        tables.append(self._exact.setdefault(host, {}))
                if not route.hosts:
                    tables.append(self._any)
                for prefix in route.paths or ("/",):
                    target = _Target(service, route, len(prefix) if route.strip_path else 0, base)
                    for table in tables:
                        table.setdefault(prefix, target)

    def match(self, host: str | None, path: str) -> Match | None:
        """Find the route for a request.

        Args:
            host: the ``Host`` header (any case, port allowed), or None when absent.
            path: the request target in origin form, ``/path?query``.

        Returns:
            The match, or None (the caller answers HTTP 404). A target that does not
            start with ``/`` never matches.
        """
        if not path.startswith("/"):
            return None
        q = path.find("?")
        if q >= 0:
            p, query = path[:q], path[q:]
        else:
            p, query = path, ""

        tables = []
        if host is not None and (self._exact or self._wildcard):
            h = normalize_host(host)
            table = self._exact.get(h)
            if table is not None:
                tables.append(table)
            if self._wildcard:
                # Suffixes from the longest down: "a.b.example.com" probes ".b.example.com" first.
                dot = h.find(".", 1)
                while dot > 0:
                    table = self._wildcard.get(h[dot:])
                    if table is not None:
                        tables.append(table)
                    dot = h.find(".", dot + 1)
        if self._any:
            tables.append(self._any)
        if not tables:
            return None

        # Candidate prefixes, longest first: the whole path, then at each "/" the prefix
        # with and without that slash ("/a/b" -> "/a/b", "/a/", "/a", "/").
        target = None
        for table in tables:
            target = table.get(p)
            if target is not None:
                break
        end = len(p)
        while target is None:
            end = p.rfind("/", 0, end)
            if end < 0:
                return None
            with_slash = p[: end + 1]
            for table in tables:
                target = table.get(with_slash)
                if target is not None:
                    break
            if target is None and end > 0:
                without = p[:end]
                for table in tables:
                    target = table.get(without)
                    if target is not None:
                        break

        if target.strip_len:
            rest = p[target.strip_len :]
            if not rest:
                return Match(target.service, target.route, target.service.path + query)
            if rest[0] != "/":
                rest = "/" + rest
        else:
            rest = p
        return Match(target.service, target.route, target.base + rest + query)
