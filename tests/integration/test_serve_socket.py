"""The listening socket `klein serve` takes before anything else starts."""

import socket

import pytest

from orchestrator.errors import ConfigError
from orchestrator.serve import Address, bind


def test_the_socket_accepts_connections_as_soon_as_it_is_bound():
    # "serving on" is logged before the web server's task runs: a client that connects then
    # must wait in the backlog, not be refused.
    sock = bind(Address("127.0.0.1", 0))
    try:
        with socket.create_connection(sock.getsockname(), timeout=2):
            pass
    finally:
        sock.close()


def test_a_busy_port_is_one_sentence():
    taken = bind(Address("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind(Address("127.0.0.1", port))
    finally:
        taken.close()
