"""Run netdiag with a fault put in before it starts (a test's stand-in for what this machine cannot
be made to lack safely):

  faultwrap.py no-nfnetlink ARGS…   netfilter netlink sockets refused (EPROTONOSUPPORT), as on a
                                    node whose nfnetlink / nf_conntrack_netlink modules are not
                                    loaded and cannot be; /proc/sys/net/netfilter/* unreadable
"""
import builtins
import errno
import socket
import sys

NETLINK_NETFILTER = 12


def no_nfnetlink() -> None:
    real_socket = socket.socket

    class Socket(real_socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family == socket.AF_NETLINK and proto == NETLINK_NETFILTER:
                raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
            super().__init__(family, type, proto, fileno)

    socket.socket = Socket
    real_open = builtins.open

    def open_(file, *a, **kw):
        if isinstance(file, str) and file.startswith("/proc/sys/net/netfilter/"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", file)
        return real_open(file, *a, **kw)

    builtins.open = open_


if __name__ == "__main__":
    {"no-nfnetlink": no_nfnetlink}[sys.argv[1]]()
    sys.argv = ["netdiag", *sys.argv[2:]]
    from netdiag.cli import main
    main()
