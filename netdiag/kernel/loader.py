"""Compile and attach in a short-lived child; keep only file descriptors in the caller.

BCC compiles with clang/LLVM in-process: importing it maps ~70 MB and compiling peaks at
~220 MB RSS. A long-running `netdiag watch` needs none of that after attach. So a child process
runs the probe engine, then hands every map fd and every attachment fd (perf events of
tracepoints and kprobes, fentry links) to the parent over a Unix socket (SCM_RIGHTS) and exits
without detaching. The parent reads the maps with plain bpf() syscalls (netdiag/kernel/bpfsys.py);
closing the fds detaches everything.

  python -m netdiag.kernel.loader FD     (internal: the child side)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from netdiag import errors
from netdiag.kernel.bpfsys import Map

MAX_FDS_PER_MSG = 200


@dataclass
class Detached:
    """What the parent holds: maps by name, attachment fds, the plan."""
    plan: dict
    maps: dict[str, Map]
    attach_fds: list[int]
    tracefs_kprobes: list[str] = field(default_factory=list)
    raw_tp: bool = False            # the shared tracepoints attached as raw tracepoints
    btf_tp: bool = False            # ... the state and RST ones as tp_btf
    btf_refused: str | None = None  # why they are raw although tp_btf was tried
    program: str = "compiled"        # or "cached": loaded from a program image (netdiag/kernel/progcache.py)
    cache_note: str | None = None    # why no image was written or used, where one could have been

    def close(self) -> None:
        for fd in self.attach_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.attach_fds = []
        for m in self.maps.values():
            m.close()
        _remove_tracefs_kprobes(self.tracefs_kprobes)


def _remove_tracefs_kprobes(names: list[str]) -> None:
    """Kprobes made through tracefs (kernels without the kprobe PMU) outlive their fds."""
    if not names:
        return
    from netdiag.kernel.tracefs import tracefs_root
    try:
        path = tracefs_root() / "kprobe_events"
        for n in names:
            with open(path, "a") as f:
                f.write(f"-:{n}\n")
    except OSError:
        pass


def _has_table(b, name: str) -> bool:
    try:
        b[name]
    except KeyError:
        return False
    return True


def load(engine_kwargs: dict, maps: list[str], optional_maps: tuple = ()) -> Detached:
    """Run the engine in a child with these arguments; return the maps and attachments.
    ``optional_maps`` may be absent from the program (left out of ``Detached.maps``).
    Where an earlier child left a program image for the same request and kernel, no child runs:
    the image is loaded here (netdiag/kernel/progcache.py)."""
    return _cached_or_child({"engine": engine_kwargs, "maps": maps, "optional_maps": list(optional_maps)})


def _cached_or_child(request: dict) -> Detached:
    """The programs of ``request`` from their image, else from a child that compiles them (and
    is asked to leave an image for next time)."""
    from netdiag.kernel import progcache
    note = None
    try:
        path = progcache.path_for(request)
    except OSError as e:             # netdiag's own files unreadable: no cache, say why
        path, note = None, f"program cache off: {e}"
    if path is not None and not progcache.dir_usable(path.parent):
        path, note = None, f"program cache off: {path.parent} is not owned by this user or is writable by others"
    if path is not None:
        image = progcache.read(path)
        if image is not None:
            try:
                header, named, attach = progcache.load(image)
            except OSError as e:     # the kernel refused it now: compile, and write a new one
                progcache.discard(path)
                note = f"program image not loaded ({e}); compiled"
            else:
                return _detached(header, {n: Map(fd, n) for n, fd in named.items()}, attach, "cached")
        request["cache_path"] = str(path)
    det = _run_child(request)
    det.cache_note = det.cache_note or note
    return det


def _detached(header: dict, maps: dict, attach: list[int], program: str) -> Detached:
    return Detached(plan=header["plan"], maps=maps, attach_fds=attach,
                    tracefs_kprobes=header.get("tracefs_kprobes", []),
                    raw_tp=bool(header.get("raw_tp")), btf_tp=bool(header.get("btf_tp")),
                    btf_refused=header.get("btf_refused"), program=program,
                    cache_note=header.get("cache_note"))


def load_dns_capture(cgroup: str | None) -> Detached:
    """Compile bpf/dns.c in a child and link its cgroup_skb programs to ``cgroup``
    (netdiag/kernel/dnsprog.py), or with ``cgroup=None`` attach its socket-path tracepoints;
    maps nd_dns_lost and nd_dns_ring<cpu> (one ring buffer per
    CPU), the links (and programs) as attachments. Loaded from a program image where an earlier
    compile left one (the rings are made again and filled into the map of maps)."""
    from netdiag.kernel.bpfsys import ncpus
    if cgroup is not None:           # a load of a few instructions instead of a compile that fails
        from netdiag.kernel.features import cgroup_skb_netns_cookie
        ok, why = cgroup_skb_netns_cookie()
        if not ok:
            raise errors.FeatureMissing("cgroup_skb", f"DNS capture on cgroup_skb unavailable: {why}")
    return _cached_or_child({"dns_capture": {"cgroup": cgroup, "ncpus": ncpus()}})


def _run_child(request: dict) -> Detached:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "netdiag.kernel.loader", str(child.fileno())],
                            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env)
    child.close()
    failure = None
    try:
        parent.sendall(json.dumps(request).encode() + b"\n")
        header, fds = _recv_all(parent)
    except (OSError, errors.BpfLoadError, ValueError) as e:   # the child died (killed, crashed) mid-way
        failure = e
    finally:
        parent.close()
        proc.wait()
    if failure is not None:
        rc = proc.returncode
        why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        raise errors.BpfLoadError(f"the probe loader exited without a word ({why}; see its stderr)") from None
    if "error" in header:
        e = header["error"]
        cls = getattr(errors, e["type"], errors.NetdiagError)
        if cls is errors.FeatureMissing:
            raise cls(e.get("feature", ""), e["message"], e.get("detail"))
        if not issubclass(cls, errors.NetdiagError) or cls is errors.BpfSyscallError:
            cls = errors.BpfLoadError   # its own fields did not cross: the message did
        raise cls(e["message"], e.get("detail"))
    names = header["maps"]
    map_fds, attach = fds[:len(names)], fds[len(names):]
    return _detached(header, {n: Map(fd, n) for n, fd in zip(names, map_fds)}, attach, "compiled")


def _recv_all(sock: socket.socket) -> tuple[dict, list[int]]:
    """The child's header and every fd it passed; on any failure the fds received so far are
    closed (each may hold an attached program) and the error raised."""
    data, fds = b"", []
    try:
        while True:
            msg, got, _flags, _addr = socket.recv_fds(sock, 1 << 16, MAX_FDS_PER_MSG)
            fds.extend(got)
            if not msg:
                break
            data += msg
        if not data:
            raise errors.BpfLoadError("the probe loader exited without a word (see its stderr)")
        return json.loads(data.decode()), fds
    except BaseException:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        raise


def _child(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            os._exit(1)
        buf += chunk
    req = json.loads(buf.decode())
    try:
        if "dns_capture" in req:
            _child_dns(sock, req["dns_capture"], req.get("cache_path"))
            os._exit(0)
        from netdiag.kernel.engine import ProbeEngine
        eng = ProbeEngine(**req["engine"])
        eng.start()
        b = eng.bpf
        # maps of optional signals (engine.OPTIONAL) exist only when the signal was planned
        names = [n for n in req["maps"] if n not in req.get("optional_maps", ()) or _has_table(b, n)]
        map_fds = [b[name].map_fd for name in names]
        attach, kp_names = [], []
        for evs in b.kprobe_fds.values():
            attach += list(evs.values())
        kp_names = [ev for ev in b.kprobe_fds if os.path.exists(f"/sys/kernel/tracing/events/kprobes/{ev}")]
        attach += list(b.tracepoint_fds.values()) + list(b.raw_tracepoint_fds.values())
        attach += list(b.kfunc_entry_fds.values()) + list(b.kfunc_exit_fds.values())
        attach += list(eng.btf_fds)
        header = {"plan": eng.plan, "maps": names, "tracefs_kprobes": kp_names, "raw_tp": eng.raw_tp,
                  "btf_tp": eng.btf_tp, "btf_refused": eng.btf_refused}
        if req.get("cache_path"):
            header["cache_note"] = _write_image(req["cache_path"], b, header, dict(zip(names, map_fds)),
                                                [(fn, "tp_btf", ev) for fn, ev in eng.btf_loaded]
                                                + list(eng.kp_attached))
        all_fds = map_fds + attach
        payload = json.dumps(header).encode()
        for i in range(0, max(len(all_fds), 1), MAX_FDS_PER_MSG):
            part = all_fds[i:i + MAX_FDS_PER_MSG]
            socket.send_fds(sock, [payload if i == 0 else b" "], part)
    except errors.NetdiagError as e:
        _send_error(sock, e)
    except Exception as e:   # anything unexpected still reaches the parent as one line
        _send_error(sock, errors.BpfLoadError(f"probe loader failed: {e}"))
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    # no interpreter shutdown: BCC's atexit cleanup would detach what the parent now holds
    os._exit(0)


def _write_image(path: str, b, header: dict, named_fds: dict[str, int], loaded, fills=None) -> str | None:
    """Leave a program image for the next start; never fails the load. None, or why not."""
    from pathlib import Path

    from netdiag.kernel import progcache
    # an image's kprobes are made through the kprobe PMU: none of them is a tracefs kprobe event
    image_header = {k: v for k, v in header.items() if k != "cache_note"}
    if "tracefs_kprobes" in image_header:
        image_header["tracefs_kprobes"] = []
    try:
        progcache.write(Path(path), progcache.build(b, image_header, named_fds, list(loaded), fills))
    except progcache.Unsupported as e:
        return f"no program image: {e} (compiled on every start)"
    except OSError as e:
        return f"no program image written: {e}"
    return None


def _child_dns(sock: socket.socket, req: dict, cache_path: str | None = None) -> None:
    from netdiag.kernel import dnsprog
    if req["cgroup"] is None:
        mode = "socket"
        attach, args = dnsprog.socket_child_attach, ()
    else:
        mode = "cgroup_skb"
        attach, args = dnsprog.cgroup_child_attach, (req["cgroup"],)
    try:
        b, maps, links, loaded = attach(*args)
    except errors.BpfSyscallError as e:   # the kernel refused a map, a load or a link: another path
        raise errors.FeatureMissing(mode, f"DNS capture on {mode} unavailable: {e}", e.detail) from e
    except errors.NetdiagError:
        raise
    except OSError as e:
        raise errors.FeatureMissing(mode, f"DNS capture on {mode} unavailable: {e.strerror or e}") from e
    except Exception as e:   # BCC compile or load: the kernel refused a helper, say
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise errors.FeatureMissing(mode, f"DNS capture on {mode} unavailable: {first}") from e
    header = {"plan": {"dns": mode}, "maps": list(maps), "cgroup": req["cgroup"]}
    if cache_path:
        header["cache_note"] = _write_image(cache_path, b, header, maps, loaded, dnsprog.ring_fills(maps))
    socket.send_fds(sock, [json.dumps(header).encode()], list(maps.values()) + links)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def _send_error(sock: socket.socket, e: Exception) -> None:
    err = {"type": type(e).__name__, "message": str(e), "detail": getattr(e, "detail", None),
           "feature": getattr(e, "feature", None)}
    socket.send_fds(sock, [json.dumps({"error": err}).encode()], [])


if __name__ == "__main__":
    _child(int(sys.argv[1]))
