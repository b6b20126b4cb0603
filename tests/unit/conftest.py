"""The unit tier needs neither root nor sockets: any test that opens a socket fails here (such
tests belong in tests/integration). Subprocesses a test starts are not affected."""
import socket

import pytest


class _NoSockets(socket.socket):
    def __init__(self, *args, **kwargs):
        raise AssertionError("unit tests open no sockets: move this test to tests/integration")


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch):
    monkeypatch.setattr(socket, "socket", _NoSockets)
    yield
