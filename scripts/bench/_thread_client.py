"""Thread-per-connection client in the style of seed 000's client_threaded.py: the anchor that
`scripts/bench/loadgen` compares netdiag's event-loop client against.

usage: _thread_client.py HOST PORT N HOLD_S TIMEOUT_S  -> one JSON line on stdout
"""
import json
import os
import resource
import socket
import sys
import threading
import time


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    host, port, n, hold, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lock = threading.Lock()
    established = [0]
    failed = {}
    release = threading.Event()

    def worker() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except OSError as e:
            with lock:
                name = type(e).__name__ if e.errno is None else os.strerror(e.errno)
                failed[name] = failed.get(name, 0) + 1
            s.close()
            return
        with lock:
            established[0] += 1
        release.wait(hold + 60)          # hold the connection, one thread each
        s.close()

    base = rss()
    t0 = time.monotonic()
    threads = []
    error = None
    for _ in range(n):
        t = threading.Thread(target=worker, daemon=True)
        try:
            t.start()
        except RuntimeError as e:        # can't start new thread
            error = str(e)
            break
        threads.append(t)
    deadline = t0 + timeout + 120
    while time.monotonic() < deadline:
        with lock:
            done = established[0] + sum(failed.values())
        if done >= len(threads):
            break
        time.sleep(0.01)
    open_s = time.monotonic() - t0
    time.sleep(hold)
    peak_rss = rss()
    print(json.dumps({"attempted": len(threads), "established": established[0], "failed": failed,
                      "open_s": round(open_s, 3), "rss_delta": peak_rss - base, "error": error}), flush=True)
    release.set()
    os._exit(0)


if __name__ == "__main__":
    main()
