"""Who may read the dashboard: with DASHBOARD_TOKEN set, whoever presents it (a bearer header, or
`?token=` once, which leaves an HttpOnly cookie); without it, this machine only. Pure decisions."""

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

COOKIE = "klein_dashboard"
NOT_LOOPBACK = (
    "the dashboard answers only on this machine (127.0.0.1 or ::1) while DASHBOARD_TOKEN is "
    "unset: set DASHBOARD_TOKEN and open /?token=<DASHBOARD_TOKEN>, or browse from this machine"
)
REFUSED_401 = (
    "missing or wrong dashboard token: send Authorization: Bearer <DASHBOARD_TOKEN>, "
    "or open /?token=<DASHBOARD_TOKEN> once"
)


@dataclass(frozen=True)
class Presented:
    """What a request brings that could let it in."""

    client_host: str | None
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


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie never carries the token."""
    return hmac.new(token.encode(), b"klein dashboard cookie", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def verdict(presented: Presented, token: str | None) -> Verdict:
    """Whether `presented` may read the dashboard, given the configured DASHBOARD_TOKEN."""
    if token is None:
        if is_loopback_client(presented.client_host):
            return Verdict(200)
        return Verdict(403, NOT_LOOPBACK)
    if _same(presented.authorization, f"Bearer {token}"):
        return Verdict(200)
    if _same(presented.query_token, token):
        return Verdict(200, set_cookie=True)
    if _same(presented.cookie, cookie_value(token)):
        return Verdict(200)
    return Verdict(401, REFUSED_401)
