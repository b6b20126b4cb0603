"""Small Linux-only helpers the event loops share: accept4, a drop-all socket filter, pdeathsig."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_accept4 = _libc.accept4
_accept4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_accept4.restype = ctypes.c_int

SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0o4000)
SOCK_CLOEXEC = getattr(socket, "SOCK_CLOEXEC", 0o2000000)
_ACCEPT_FLAGS = SOCK_NONBLOCK | SOCK_CLOEXEC

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
PR_SET_PDEATHSIG = 1


def accept4(fd: int) -> int:
    """accept4(fd, NULL, NULL, SOCK_NONBLOCK|SOCK_CLOEXEC): a new fd, or -errno.

    No address object is built: the loops never need the peer's address.
    """
    r = _accept4(fd, None, None, _ACCEPT_FLAGS)
    if r < 0:
        return -ctypes.get_errno()
    return r


# A one-instruction classic BPF program, "ret #0": the kernel drops every packet that reaches the
# socket. On a listener it drops incoming SYNs (and handshake ACKs) before the accept queue.
_DROP_ALL = (ctypes.c_uint8 * 8).from_buffer_copy(struct.pack("HBBI", 0x06, 0, 0, 0))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_DROP_PROG = _SockFprog(1, ctypes.addressof(_DROP_ALL))
_DROP_PROG_BYTES = bytes(ctypes.string_at(ctypes.addressof(_DROP_PROG), ctypes.sizeof(_DROP_PROG)))


def attach_drop_filter(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_PROG_BYTES)


def detach_filter(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (no orphaned workers)."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (AttributeError, OSError):
        pass
    if os.getppid() == 1:
        os._exit(1)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
