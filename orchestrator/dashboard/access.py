"""Who may read the dashboard: with DASHBOARD_TOKEN set, whoever presents it (a bearer header, or
`?token=` once, which leaves an HttpOnly cookie); without it, this machine only: a loopback peer
that names this machine in Host (a page whose DNS name was rebound to 127.0.0.1 names its own)
and came through no proxy (a reverse proxy on this machine is a loopback peer too, relaying
anyone). Pure decisions."""

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

COOKIE = "klein_dashboard"
NOT_LOOPBACK = (
    "the dashboard answers only on this machine (127.0.0.1 or ::1) while DASHBOARD_TOKEN is "
    "unset: set DASHBOARD_TOKEN and open /?token=<DASHBOARD_TOKEN>, or browse from this machine"
)
NOT_THIS_MACHINES_NAME = (
    "the dashboard answers only to this machine's own names (localhost, 127.0.0.1, [::1]) "
    "while DASHBOARD_TOKEN is unset: set DASHBOARD_TOKEN to reach it by another name"
)
RELAYED = (
    "the dashboard answers no request relayed by a proxy (Forwarded, X-Forwarded-For, "
    "X-Real-IP) while DASHBOARD_TOKEN is unset: set DASHBOARD_TOKEN to serve it through one"
)
RELAY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
REFUSED_401 = (
    "missing or wrong dashboard token: send Authorization: Bearer <DASHBOARD_TOKEN>, "
    "or open /?token=<DASHBOARD_TOKEN> once"
)


@dataclass(frozen=True)
class Presented:
    """What a request brings that could let it in."""

    client_host: str | None
    host_header: str | None = None
    relayed: bool = False
    authorization: str | None = None
    query_token: str | None = None
    cookie: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Let in (status 200), or refused with a status and one sentence; `set_cookie` when a valid
    `?token=` should be swapped for the cookie."""

    status: int
    message: str = ""
    set_cookie: bool = False

    @property
    def allowed(self) -> bool:
        """Whether the request may read the dashboard."""
        return self.status == 200


def is_loopback_client(host: str | None) -> bool:
    """Whether a peer address (as the server saw it) is this machine."""
    try:
        return host is not None and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def names_this_machine(host_header: str) -> bool:
    """Whether a Host header (name or address, with or without a port) is this machine's own:
    localhost (and its subdomains, which resolve to loopback without asking DNS) or a loopback
    address."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":")[0]
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    return is_loopback_client(host)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), or None."""
    parts = (authorization or "").split(None, 1)
    return parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else None


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie never carries the token."""
    return hmac.new(token.encode(), b"klein dashboard cookie", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def verdict(presented: Presented, token: str | None) -> Verdict:
    """Whether `presented` may read the dashboard, given the configured DASHBOARD_TOKEN."""
    if token is None:
        if not is_loopback_client(presented.client_host):
            return Verdict(403, NOT_LOOPBACK)
        if presented.relayed:
            return Verdict(403, RELAYED)
        if presented.host_header is not None and not names_this_machine(presented.host_header):
            return Verdict(403, NOT_THIS_MACHINES_NAME)
        return Verdict(200)
    if _same(bearer_token(presented.authorization), token):
        return Verdict(200)
    if _same(presented.query_token, token):
        return Verdict(200, set_cookie=True)
    if _same(presented.cookie, cookie_value(token)):
        return Verdict(200)
    return Verdict(401, REFUSED_401)
