"""The endpoint key of destination rows, listeners and verdicts.

An ``Endpoint`` is an address and a port. The collector makes one from the kernel's key (or
inet_diag's socket) and it is carried as it is through aggregation, enrichment and diagnosis:
every stage reads ``addr`` and ``port`` and none parses text. Its text is the contract's
rendering, ``addr:port`` (``[addr]:port`` for IPv6, docs/contracts.md), and an Endpoint *is* that
string (a ``str`` subclass), so a sink writes it unchanged (JSON, a table cell, a label) and a row
compares equal to the text a consumer of the NDJSON knows. Text read back from files becomes an
Endpoint in one place only: ``netdiag.offline.keys``.
"""
from __future__ import annotations

import weakref

WILDCARDS = ("0.0.0.0", "::")          # the unspecified addresses: a listener on every address


class Endpoint(str):
    """``Endpoint(addr, port)``: ``addr`` the address as text (``198.18.0.1``, ``::1``, no
    brackets), ``port`` an int; immutable. Made through ``endpoint()`` where many repeat."""

    addr: str
    port: int

    def __new__(cls, addr: str, port: int) -> Endpoint:
        self = super().__new__(cls, f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
        vars(self).update(addr=addr, port=port)        # (a dict made this way is the smaller one)
        return self

    def __setattr__(self, name, value):
        raise AttributeError(f"Endpoint is immutable (cannot set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"Endpoint is immutable (cannot delete {name!r})")

    def __reduce__(self):
        return (Endpoint, (self.addr, self.port))

    def __copy__(self) -> Endpoint:
        return self

    def __deepcopy__(self, memo) -> Endpoint:
        return self

    def __repr__(self) -> str:
        return f"Endpoint({self.addr!r}, {self.port})"

    @property
    def wildcard(self) -> bool:
        """Is the address the unspecified one (a listener on every address)?"""
        return self.addr in WILDCARDS


_live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def endpoint(addr: str, port: int) -> Endpoint:
    """The Endpoint of (addr, port): the same object for as long as a row, a listener or a
    verdict holds it (rows of one key are built every interval, and the diagnosis keeps a window
    of them), forgotten when nothing does."""
    e = _live.get((addr, port))
    if e is None:
        e = _live[(addr, port)] = Endpoint(addr, port)
    return e
