"""Who reaches the dashboard of a real `klein serve` without DASHBOARD_TOKEN: this machine only,
whatever a request claims in its headers."""

import socket

import httpx
import pytest


def this_machines_other_address() -> str:
    """An address of this machine that is not loopback (the one its default route leaves by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # sends nothing: only picks the route
        except OSError:
            pytest.skip("no network interface besides loopback")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("no network interface besides loopback")
    return address


def test_a_remote_client_claiming_to_be_local_is_refused(serve):
    address = this_machines_other_address()
    # uvicorn reads FORWARDED_ALLOW_IPS from the environment: '*' trusts every peer's headers.
    klein = serve("w1", KLEIN_HOST="0.0.0.0", FORWARDED_ALLOW_IPS="*")
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=5) as remote:
        url = f"http://{address}:{klein.port}/dashboard.json"
        claims = [
            {"X-Forwarded-For": "127.0.0.1"},
            {"Forwarded": "for=127.0.0.1"},
            {"X-Forwarded-For": "127.0.0.1", "Host": "localhost"},
            {},
        ]
        answers = [remote.get(url, headers=headers) for headers in claims]
    assert [answer.status_code for answer in answers] == [403] * len(claims)
    assert all("DASHBOARD_TOKEN" in answer.json()["error"] for answer in answers)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"Host": "rebound.attacker.example"}, "own names"),  # DNS rebinding
        ({"X-Forwarded-For": "203.0.113.9"}, "proxy"),  # a reverse proxy on this machine
        ({"X-Real-IP": "203.0.113.9"}, "proxy"),
    ],
)
def test_a_local_request_by_another_name_or_through_a_proxy_is_refused(serve, headers, says):
    klein = serve("w1")
    answer = httpx.get(f"{klein.base_url}/dashboard.json", headers=headers, timeout=5)
    assert answer.status_code == 403
    assert says in answer.json()["error"]
    direct = httpx.get(f"{klein.base_url}/dashboard.json", timeout=5)
    assert direct.status_code == 200
    assert "queue" in direct.json()
