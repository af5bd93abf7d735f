"""Which addresses a reference-image fetch may reach: one verdict per hop, pinned for the hop.

The URL is parsed once, by urllib3 (the library that connects), after the contract has refused the
forms that parsers read differently. The host is resolved once; the connection goes to the vetted
address itself, so a second DNS answer (rebinding) is never asked for.
"""

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from handler.contract import image_url_problem
from handler.errors import ImageFetchError, InvalidInput

Resolver = Callable[[str], Iterable[str]]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PRIVATE_ADDRESS = "Invalid parameter: image_url points to a private or local address"
UNRESOLVABLE = "Could not fetch image_url: cannot resolve its host"
DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at: IPv4-compatible
# (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d) and the well-known NAT64 prefix.
LOW32_IPV4_PREFIXES = tuple(
    ipaddress.IPv6Network(prefix) for prefix in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# Never a public web host, though Python 3.11's `is_global` passes them: local-use NAT64 (RFC
# 8215, translated by the operator's own gateway), the deprecated site-local fec0::/10 (RFC 3879,
# still routed inside some networks), documentation 3fff::/20 (RFC 9637) and SRv6 5f00::/16
# (RFC 9602).
ALWAYS_FORBIDDEN = tuple(
    ipaddress.IPv6Network(prefix)
    for prefix in ("64:ff9b:1::/48", "fec0::/10", "3fff::/20", "5f00::/16")
)


@dataclass(frozen=True)
class Target:
    """Where one request goes: the host as the URL names it, and what to send it."""

    scheme: str
    host: str  # no brackets, IDNA-encoded; the TLS server name
    port: int
    request_uri: str
    host_header: str


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address maps, embeds or tunnels to."""
    found = [v4 for v4 in (address.ipv4_mapped, address.sixtofour) if v4 is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in prefix for prefix in LOW32_IPV4_PREFIXES):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_forbidden_address(address: IpAddress) -> bool:
    """True for addresses a fetch must never reach: non-global, multicast, or an IPv6 form that
    embeds such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in ALWAYS_FORBIDDEN):
            return True
        if any(is_forbidden_address(v4) for v4 in embedded_ipv4(address)):
            return True
    return not address.is_global or address.is_multicast


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver gives for a host."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageFetchError(UNRESOLVABLE) from exc
    return [str(info[4][0]) for info in infos]


def parse_target(url: str) -> Target:
    """The request a URL means, read by urllib3; refused if any parser could read it otherwise."""
    if problem := image_url_problem(url):
        raise InvalidInput(f"Invalid parameter: image_url {problem}")
    try:
        parts = parse_url(url)
    except LocationParseError:
        raise InvalidInput("Invalid parameter: image_url must be an http(s) URL") from None
    scheme = parts.scheme or ""
    if scheme not in DEFAULT_PORTS or not parts.host or parts.auth is not None:
        raise InvalidInput("Invalid parameter: image_url must be an http(s) URL")
    port = parts.port or DEFAULT_PORTS[scheme]
    explicit_port = f":{port}" if port != DEFAULT_PORTS[scheme] else ""
    return Target(
        scheme=scheme,
        host=parts.host.strip("[]"),
        port=port,
        request_uri=parts.request_uri,
        host_header=parts.host + explicit_port,
    )


@dataclass(frozen=True)
class UrlPolicy:
    """The one rule for every hop: resolve once, every address allowed, or refuse."""

    resolve: Resolver = system_resolver
    allow_private: bool = False
    # Non-global networks allowed anyway (an internal image host; tests' loopback servers).
    allowed_networks: tuple[IpNetwork, ...] = ()

    def allows(self, address: IpAddress) -> bool:
        """True if a connection to this address is allowed."""
        if self.allow_private or not is_forbidden_address(address):
            return True
        return any(address in network for network in self.allowed_networks)

    def vet(self, url: str) -> tuple[Target, list[IpAddress]]:
        """The URL's target and the addresses to connect to (resolved once, all allowed)."""
        target = parse_target(url)
        addresses = self._addresses(target.host)
        if not all(self.allows(address) for address in addresses):
            raise InvalidInput(PRIVATE_ADDRESS)
        return target, addresses

    def _addresses(self, host: str) -> list[IpAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            found = [ipaddress.ip_address(text.split("%", 1)[0]) for text in self.resolve(host)]
        except ValueError:
            raise ImageFetchError(UNRESOLVABLE) from None
        if not found:
            raise ImageFetchError(UNRESOLVABLE)
        return list(dict.fromkeys(found))
