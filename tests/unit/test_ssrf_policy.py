"""The image_url policy without a network: ambiguous URL forms, IPv6 forms that embed IPv4,
the contract refusing both before any GPU spend, and no text that crashes the parser."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler.contract import parse_input
from handler.errors import ImageFetchError, InvalidInput
from handler.image_fetch import next_hop
from handler.url_policy import UrlPolicy, is_forbidden_address, parse_target

NO_RESOLVER_CALLS: list[str] = []


def refusing_resolver(host: str) -> list[str]:
    NO_RESOLVER_CALLS.append(host)
    return ["127.0.0.1"]


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        (
            "http://127.0.0.1:8310\\@8.8.8.8/x",
            "Invalid parameter: image_url must not contain backslashes, spaces or control "
            "characters",
        ),
        (
            "http://8.8.8.8\\@127.0.0.1:8310/x",
            "Invalid parameter: image_url must not contain backslashes, spaces or control "
            "characters",
        ),
        (
            "http://127.0.0.1:8310@images.example.com/x",
            "Invalid parameter: image_url must not contain a user name or password",
        ),
        (
            "http://user:pw@images.example.com/x",
            "Invalid parameter: image_url must not contain a user name or password",
        ),
        (
            "http://images.example.com\t.evil/x",
            "Invalid parameter: image_url must not contain backslashes, spaces or control "
            "characters",
        ),
        (
            "http://images.example.com/" + "a" * 9000,
            "Invalid parameter: image_url must be at most 8192 characters",
        ),
    ],
)
def test_ambiguous_urls_are_refused_before_any_lookup(url, sentence):
    """The parser-mismatch SSRF: the guard and the connection must never read different hosts."""
    NO_RESOLVER_CALLS.clear()
    with pytest.raises(InvalidInput) as caught:
        UrlPolicy(resolve=refusing_resolver).vet(url)
    assert str(caught.value) == sentence
    assert NO_RESOLVER_CALLS == []
    with pytest.raises(InvalidInput) as at_intake:
        parse_input({"prompt": "p", "image_url": url})
    assert str(at_intake.value) == sentence


def test_a_redirect_to_an_ambiguous_url_is_refused():
    with pytest.raises(InvalidInput, match="redirected to a URL that must not contain a user"):
        next_hop("https://images.example.com/a", "http://127.0.0.1:8310@images.example.com/")
    with pytest.raises(InvalidInput, match="redirected to a non-http"):
        next_hop("https://images.example.com/a", "file:///etc/passwd")


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
        "64:ff9b::127.0.0.1",  # NAT64 well-known prefix
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::8.8.8.8",  # local-use NAT64: the operator's own network
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "::ffff:0:7f00:1",  # IPv4-translated ::ffff:0:127.0.0.1
        "::ffff:127.0.0.1",  # IPv4-mapped
    ],
)
def test_ipv6_forms_embedding_a_local_ipv4_address_are_forbidden(address):
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]:8310/x",
        "http://[64:ff9b::127.0.0.1]/x",
        "http://[2002:7f00:1::]/x",
        "http://[::ffff:0:7f00:1]/x",
    ],
)
def test_urls_with_embedded_ipv4_literals_are_refused(url):
    with pytest.raises(InvalidInput, match="private or local address"):
        UrlPolicy(resolve=refusing_resolver).vet(url)


@pytest.mark.parametrize("address", ["fec0::1", "feff::1", "3fff::1", "3fff:fff::1", "5f00::1"])
def test_ipv6_ranges_python_calls_global_that_no_web_host_uses_are_forbidden(address):
    """Site-local (deprecated, still routed inside some networks), documentation and SRv6:
    Python 3.11's is_global passes them."""
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["2606:4700::1111", "2a00:1450:4001::64", "3fff:1000::1"])
def test_public_ipv6_addresses_stay_allowed(address):
    assert not is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"])
def test_ipv6_forms_of_a_public_ipv4_address_stay_allowed(address):
    assert not is_forbidden_address(ipaddress.ip_address(address))


non_global_ipv4 = (
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(lambda a: not a.is_global)
)


@given(non_global_ipv4)
def test_every_embedding_of_a_non_global_ipv4_address_is_forbidden(v4):
    low = int(v4)
    forms = [
        low,  # ::a.b.c.d
        (0xFFFF << 32) | low,  # ::ffff:a.b.c.d
        (0xFFFF << 48) | low,  # ::ffff:0:a.b.c.d
        (0x64FF9B << 96) | low,  # 64:ff9b::a.b.c.d
        (0x2002 << 112) | (low << 80),  # 2002:aabb:ccdd::
    ]
    for form in forms:
        assert is_forbidden_address(ipaddress.IPv6Address(form)), ipaddress.IPv6Address(form)


def test_a_hostname_resolving_to_an_embedded_form_is_refused():
    policy = UrlPolicy(resolve=lambda host: ["64:ff9b::7f00:1"])
    with pytest.raises(InvalidInput, match="private or local address"):
        policy.vet("https://images.example.com/a.png")


def test_an_allow_list_admits_only_its_networks():
    policy = UrlPolicy(
        resolve=lambda host: ["127.0.0.2"],
        allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),),
    )
    assert policy.vet("http://images.test/a.png")[1] == [ipaddress.ip_address("127.0.0.2")]
    with pytest.raises(InvalidInput, match="private or local address"):
        policy.vet("http://127.0.0.1/a.png")


def test_the_target_keeps_the_host_for_host_header_and_tls():
    target = parse_target("https://Images.Example.com:8443/a%20b.png?x=1#frag")
    assert (target.scheme, target.host, target.port) == ("https", "images.example.com", 8443)
    assert target.request_uri == "/a%20b.png?x=1"
    assert target.host_header == "images.example.com:8443"
    assert parse_target("http://[2606:4700::1]/").host == "2606:4700::1"


@given(st.text(max_size=80) | st.builds(lambda tail: "http://" + tail, st.text(max_size=60)))
def test_any_text_is_a_target_or_a_clear_sentence(url):
    """No URL text makes the policy raise anything but a sentence (and it never resolves for
    real: the resolver here answers a forbidden address)."""
    try:
        _target, addresses = UrlPolicy(resolve=lambda host: ["10.0.0.1"]).vet(url)
    except (InvalidInput, ImageFetchError) as exc:
        message = str(exc)
    else:  # only a literal public address can pass
        assert not any(is_forbidden_address(address) for address in addresses)
        return
    assert message.startswith(("Invalid parameter: image_url ", "Could not fetch image_url: "))
