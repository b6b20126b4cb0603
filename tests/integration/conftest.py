"""The integration tier: no root, but real sockets on loopback and real subprocesses (the load
generator's server and client). Every test here is marked ``integration``."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)
