"""Bounded loopback traffic for `make demo`: connects that succeed, are refused, and are accepted.

  demo_traffic.py [--seconds S] [--rate N]
Everything stays on 127.0.0.1; the loop stops after S seconds."""
import argparse
import socket
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=12)
ap.add_argument("--rate", type=int, default=5, help="connections per second")
a = ap.parse_args()

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
port = srv.getsockname()[1]
closed = socket.socket()
closed.bind(("127.0.0.1", 0))           # bound, never listening: connects to it are refused
refused_port = closed.getsockname()[1]
srv.settimeout(0.5)


def acceptor(stop):
    while not stop.is_set():
        try:
            c, _ = srv.accept()
            c.close()
        except OSError:
            pass


stop = threading.Event()
threading.Thread(target=acceptor, args=(stop,), daemon=True).start()
end = time.monotonic() + a.seconds
i = 0
while time.monotonic() < end:
    target = refused_port if i % 4 == 3 else port
    try:
        socket.create_connection(("127.0.0.1", target), timeout=1).close()
    except OSError:
        pass
    i += 1
    time.sleep(1 / a.rate)
stop.set()
