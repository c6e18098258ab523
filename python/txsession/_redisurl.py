"""
Redis URLs for L{txsession.redis.RedisStore}: what each form points to, the commands that set
up a connection, TLS, and the URL as messages show it (without any password).

Forms::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db]                      (TLS)
    unix://path[?db=N]
    redis://[[user]:password@]host:port,host:port,...                (cluster=True: seeds)
    redis-sentinel://[[user]:password@]host[:port][,host[:port]...][/db]
        [?sentinelUsername=U&sentinelPassword=P]#service
    rediss-sentinel://...                                            (TLS, sentinels and data)

In the sentinel forms the user and password before the hosts are the data nodes' (as in
Lettuce's form); the sentinels' own credentials, which may differ, are the query's
C{sentinelUsername} and C{sentinelPassword}. Without C{sentinelPassword} the sentinels are
asked without C{AUTH}.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote

_DEFAULT_PORT = {
    "redis": 6379,
    "rediss": 6379,
    "redis-sentinel": 26379,
    "rediss-sentinel": 26379,
}

_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://... (TLS), unix://path[?db=N], "
    "or redis-sentinel://[[user]:password@]host[:port][,host[:port]...][/db]#service "
    "(rediss-sentinel:// with TLS)"
)

_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;])[^=&;#]*password=)[^&;#]*")


def redacted(url: str) -> str:
    """
    C{url} with every password in it (the user part's and any C{...password=} query value)
    replaced by C{***}: what messages and C{repr} show. Anything between C{://} and the last
    C{@} before the path counts as the user part, so a password with a character that should
    have been escaped is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_SECRET.sub(r"\1***", url)
    netloc, tail = _splitNetloc(rest)
    tail = _QUERY_SECRET.sub(r"\1***", tail)
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{user}@{hosts}"
    return f"{scheme}://{netloc}{tail}"


def _splitNetloc(rest: str) -> tuple[str, str]:
    """
    C{rest} (a URL after its C{://}) split where its authority ends. A C{@} after a C{/},
    C{?} or C{#} still belongs to the authority, so that a password holding one of those is
    never taken for the path.
    """
    at = rest.rfind("@")
    start = at + 1 if at >= 0 else 0
    ends = [i for i in (rest.find(c, start) for c in "/?#") if i >= 0]
    end = min(ends) if ends else len(rest)
    return rest[:end], rest[end:]


def _hostPort(text: str, default: int, display: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, after = text[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
        if after and not after.startswith(":"):
            raise ValueError(f"a bad host in the Redis URL {display!r}")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"no host in the Redis URL {display!r}")
    if port and not port.isdigit():
        raise ValueError(f"the port in the Redis URL {display!r} is not a number")
    number = int(port) if port else default
    if not 0 < number < 65536:
        raise ValueError(f"the port in the Redis URL {display!r} is out of range")
    return host.lower(), number


class RedisURL:
    """
    A parsed Redis URL. C{ValueError} for a URL that is not a Redis one; C{TypeError} for one
    that is not a C{str}.

    @ivar kind: C{"tcp"}, C{"unix"} or C{"sentinel"}.
    @ivar tls: Whether connections use TLS (C{rediss} schemes).
    @ivar nodes: C{(host, port)}: the server, the seeds (cluster) or the sentinels.
    @ivar setup: Commands that set up each data connection (C{AUTH}, C{SELECT}).
    @ivar sentinelSetup: Commands that set up each connection to a sentinel (C{AUTH}).
    @ivar display: The URL without its passwords.
    """

    def __init__(self, url: str) -> None:
        if not isinstance(url, str):
            raise TypeError(f"a Redis URL is a str, not {type(url).__name__}")
        self.display = display = redacted(url)
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or (scheme not in _DEFAULT_PORT and scheme != "unix"):
            raise ValueError(f"a Redis URL is {_FORMS}, not {display!r}")
        self.tls = scheme.startswith("rediss")
        self.kind = "sentinel" if scheme.endswith("-sentinel") else "tcp"
        self.path: str | None = None
        self.service: str | None = None
        self.nodes: list[tuple[str, int]] = []
        self.setup: list[list[bytes]] = []
        self.sentinelSetup: list[list[bytes]] = []
        netloc, tail = _splitNetloc(rest)
        tail, _, fragment = tail.partition("#")
        path, _, query = tail.partition("?")
        options = parse_qs(query, keep_blank_values=True)
        userinfo, at, hosts = netloc.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            if colon:
                auth = [b"AUTH"]
                if user:
                    auth.append(unquote(user).encode())
                self.setup.append(auth + [unquote(password).encode()])
        if scheme == "unix":
            self.kind = "unix"
            self.path = unquote(hosts + path)
            if not self.path:
                raise ValueError(f"no socket path in the Redis URL {display!r}")
            db = options.get("db", ["0"])[0]
        else:
            db = unquote(path.lstrip("/")) or "0"
            default = _DEFAULT_PORT[scheme]
            self.nodes = [_hostPort(h, default, display) for h in hosts.split(",") if h]
            if not self.nodes:
                raise ValueError(f"no host in the Redis URL {display!r}")
        if not db.isdigit():
            raise ValueError(f"the database in the Redis URL {display!r} is not a number")
        self.db = int(db)
        if self.db:
            self.setup.append([b"SELECT", str(self.db).encode()])
        if self.kind == "sentinel":
            self.service = unquote(fragment)
            if not self.service:
                raise ValueError(
                    f"a sentinel URL names its primary after '#' (…/db#service): {display!r}"
                )
            if "sentinelPassword" in options:
                auth = [b"AUTH"]
                if "sentinelUsername" in options:
                    auth.append(options["sentinelUsername"][0].encode())
                self.sentinelSetup.append(auth + [options["sentinelPassword"][0].encode()])
        elif self.kind == "tcp" and len(self.nodes) > 1:
            self.kind = "seeds"

    def nodeDisplay(self, host: str, port: int) -> str:
        """
        How messages name the data node C{host:port} of this URL (no password).
        """
        scheme = "rediss" if self.tls else "redis"
        name = f"[{host}]" if ":" in host else host
        return f"{scheme}://{name}:{port}/{self.db}"


def requireTLS() -> None:
    """
    C{ImportError}, saying what to install, unless Twisted's TLS (pyOpenSSL) and
    C{service_identity} (host name checks) can be imported.
    """
    try:
        import service_identity  # noqa: F401
        from twisted.internet import ssl  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "a TLS Redis URL (rediss://) needs pyOpenSSL and service_identity: "
            f"pip install 'txsession[tls]' ({e})"
        ) from None


def tlsCreator(tls: Any, host: str) -> Any:
    """
    The Twisted client TLS connection creator for a connection to C{host}: C{tls} itself when
    it is one, C{tls(host)} when it is a callable, or by default one that checks the
    server's certificate against the platform's trust roots and C{host}.
    """
    from twisted.internet import ssl
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    if tls is None:
        return ssl.optionsForClientTLS(host)
    if IOpenSSLClientConnectionCreator.providedBy(tls):
        return tls
    if callable(tls):
        return tls(host)
    raise TypeError(
        "tls= takes a Twisted client TLS creator (ssl.optionsForClientTLS(...)) or a "
        f"callable from a host name to one, not {tls!r}"
    )


def checkTLSOption(tls: Any, url: RedisURL) -> None:
    if tls is not None and not url.tls:
        raise ValueError(
            f"tls= needs a TLS URL (rediss:// or rediss-sentinel://), not {url.display!r}"
        )
    if url.tls:
        requireTLS()
        if tls is not None and not callable(tls):
            from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

            if not IOpenSSLClientConnectionCreator.providedBy(tls):
                raise TypeError(
                    "tls= takes a Twisted client TLS creator (ssl.optionsForClientTLS(...)) "
                    f"or a callable from a host name to one, not {tls!r}"
                )


def lostReason(value: BaseException) -> str:
    """
    Why a connection ended, for a message: TLS failures (an untrusted certificate, a host
    name the certificate does not name, a refused client certificate) named as such.
    """
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - without TLS support
        SSL = None  # type: ignore[assignment]
    if SSL is not None and isinstance(value, SSL.Error):
        reasons = []
        for item in value.args[0] if value.args and isinstance(value.args[0], list) else []:
            if isinstance(item, tuple) and item:
                reasons.append(str(item[-1]))
        why = ", ".join(reasons) or str(value)
        return f"the TLS handshake failed: {why}"
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - without TLS support
        VerificationError = None  # type: ignore[assignment,misc]
    if VerificationError is not None and isinstance(value, VerificationError):
        return f"the server's TLS certificate does not name the host it was reached at: {value}"
    return str(value)
