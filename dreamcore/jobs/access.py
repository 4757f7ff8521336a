"""Who may call the job REST API, checked on every request before a route runs.

A web page open in the person's browser can send requests to a server on their computer. Three checks keep
such a page out, whatever route it aims at:

- ``Host`` must name this server (the address it listens on, or a localhost name): a page that has made its
  own domain name point at 127.0.0.1 (DNS rebinding) sends its own name and is refused (421).
- ``Origin``, when the browser sends one, must be the server's own (same origin) or one the host allows
  (a WebUI's ``--cors-allow-origins``): a cross-site page is refused (403).
- A request body must be ``application/json`` (415): a page can send ``text/plain`` or a form without the
  browser asking the server first, but not JSON.

A server that listens beyond this computer also requires a login: a token sent as
``Authorization: Bearer <token>``, or inside a WebUI the WebUI's own API login (HTTP Basic, ``--api-auth``).
Bodies are capped (413 past ``max_body_bytes``), so a huge body is never read whole.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1024 * 1024
LOCALHOST_NAMES = frozenset({"localhost"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the HTTP status, a message for the caller, and headers to send."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiAccess:
    """The rules one server applies to every request. Build it with ``for_listener`` (a server of our own)
    or directly (inside a WebUI, from the WebUI's own settings)."""

    # Host names and addresses accepted in the Host header (lower case, no port); localhost names and
    # loopback addresses are always accepted.
    host_names: frozenset[str] = frozenset()
    # Listening on every interface: any IP address in Host is ours (a rebinding page sends a name, never
    # an address), as is the machine's own name.
    any_address: bool = False
    # Origins allowed besides the server's own, e.g. a WebUI's --cors-allow-origins (exact, or a regex).
    extra_origins: frozenset[str] = frozenset()
    extra_origin_pattern: str | None = None
    # A login: a bearer token, or user -> password for HTTP Basic (the WebUI's --api-auth). None: no login.
    token: str | None = None
    basic_credentials: Mapping[str, str] | None = None
    login_hint: str = ""  # how to log in, for the 401 message
    max_body_bytes: int = MAX_BODY_BYTES

    @classmethod
    def for_listener(cls, address: str, token: str | None = None, extra_hosts: tuple[str, ...] = ()) -> ApiAccess:
        """The rules of a server of our own listening on ``address``. Beyond loopback a token is required:
        pass it, or call ``needs_token`` first and generate one."""
        address = address.strip().lower()
        if needs_token(address) and not token:
            raise ValueError(f"listening on {address} needs a token: anyone on the network could reach the API")
        names = {name.strip().lower().rstrip(".") for name in extra_hosts if name.strip()}
        any_address = address in WILDCARD_ADDRESSES
        if any_address:
            names |= machine_names()
        else:
            names.add(address.strip("[]"))
        return cls(host_names=frozenset(names), any_address=any_address, token=token or None,
                   login_hint="send the token printed when the server started, as 'Authorization: Bearer <token>'")

    # --- the checks --------------------------------------------------------------------------------
    def refusal(self, method: str, headers: Mapping[str, str], scheme: str = "http") -> Refusal | None:
        """Why this request may not proceed, or None. ``headers`` are looked up in lower case."""
        host_header = headers.get("host", "")
        host = _split_host(host_header)
        if host is None or not self._is_our_host(host[0]):
            return Refusal(421, f"this server does not answer to the host name {host_header!r}; use the address "
                                "it listens on (e.g. http://127.0.0.1:PORT)")
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host, scheme):
            return Refusal(403, f"requests from the web page {origin!r} are refused: only pages of this server "
                                "itself (or programs that send no Origin) may use the job API")
        login = self._login_refusal(headers.get("authorization", ""))
        if login is not None:
            return login
        if method.upper() in _BODY_METHODS:
            content_type = headers.get("content-type")
            has_body = headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers
            if (content_type is not None or has_body) and media_type(content_type or "") != "application/json":
                return Refusal(415, "send the request body as JSON with the header 'Content-Type: application/json' "
                                    f"(got {content_type or 'no content type'})")
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.max_body_bytes:  # the server itself refuses a malformed one
            return body_too_large(self.max_body_bytes)
        return None

    def _is_our_host(self, name: str) -> bool:
        if name in LOCALHOST_NAMES or name in self.host_names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_address

    def _origin_allowed(self, origin: str, host: tuple[str, int | None], scheme: str) -> bool:
        normalized = origin.strip().lower().rstrip("/")
        if normalized in self.extra_origins or (
                self.extra_origin_pattern and re.fullmatch(self.extra_origin_pattern, origin.strip())):
            return True
        if normalized == "null":
            return False  # a sandboxed frame or a local file: never this server's own page
        parts = urlsplit(normalized)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return False
        try:
            origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        name, port = host
        if parts.hostname.strip("[]") != name:
            return False
        # A Host without a port is the default port of the scheme the browser used (behind a TLS proxy the
        # server itself may see plain http): then the origin must be on a default port too.
        return origin_port == port if port is not None else origin_port in _DEFAULT_PORTS.values()

    def _login_refusal(self, authorization: str) -> Refusal | None:
        if self.token is None and self.basic_credentials is None:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if self.token is not None and scheme.lower() == "bearer" and _same(value, self.token):
            return None
        if self.basic_credentials is not None and scheme.lower() == "basic":
            user, password = _basic_credentials(value)
            expected = self.basic_credentials.get(user) if user is not None else None
            if expected is not None and _same(password or "", expected):
                return None
        challenge = 'Bearer realm="dreamcore"' if self.token is not None else 'Basic realm="dreamcore"'
        what = "a wrong login" if authorization.strip() else "no login"
        return Refusal(401, f"the job API needs a login and the request carried {what}: {self.login_hint}",
                       {"WWW-Authenticate": challenge})


def needs_token(address: str) -> bool:
    """Whether a server listening on ``address`` can be reached from other computers."""
    name = address.strip().lower().strip("[]")
    if name in LOCALHOST_NAMES:
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to a network address


def new_token() -> str:
    return secrets.token_urlsafe(24)


def machine_names() -> set[str]:
    """This computer's own names, as a browser on the network may use them in the address."""
    names = {socket.gethostname(), socket.getfqdn()}
    names |= {f"{name}.local" for name in list(names) if name and "." not in name}  # mDNS
    return {name.lower().rstrip(".") for name in names if name}


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def body_too_large(limit: int) -> Refusal:
    return Refusal(413, f"the request body is larger than {limit // 1024} KiB; job settings are far smaller: "
                        "send only the settings, not files")


def parse_basic_credentials(text: str) -> dict[str, str]:
    """``user:password,user2:password2`` (the WebUIs' --api-auth form) as a dict; a password may hold ':'."""
    credentials = {}
    for entry in text.replace("\n", ",").split(","):
        user, colon, password = entry.strip().partition(":")
        if colon and user:
            credentials[user.strip().strip('"')] = password.strip().strip('"')
    return credentials


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` / ``[v6]:port`` as (lower-case name, port); None when it is not a host."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    elif ":" in value:
        return None  # an IPv6 address without brackets is not a valid Host
    else:
        name, port_text = value, ""
    if port_text and not port_text.isdigit():
        return None
    return name.rstrip("."), int(port_text) if port_text else None


def _basic_credentials(value: str) -> tuple[str | None, str | None]:
    try:
        user, colon, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (user, password) if colon else (None, None)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
