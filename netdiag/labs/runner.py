"""Run one lab: namespaces, load generator and watcher together; verdicts at the end; everything
removed on exit, error, Ctrl-C or SIGTERM (unless ``keep``)."""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time

from netdiag.analysis.diagnose import Diagnoser
from netdiag.errors import EXIT_DATAERR, NetdiagError
from netdiag.labs.scenarios import BUILD, RUN, SCENARIOS, Ctx
from netdiag.labs.topology import _ip

LAB_MARK = "l"                      # lab namespaces are nd-l<hex>-<role>
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
# A lab that changes a node-wide sysctl (only with --allow-host-sysctl) first writes the value it
# will restore here, so that `netdiag lab cleanup` restores it after a lab that was killed.
STATE_DIR = "/run/netdiag/labs"


def new_tag() -> str:
    return LAB_MARK + secrets.token_hex(2)[:3]


def lab_leftovers() -> list[str]:
    p = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in p.stdout.splitlines()]
    return [n for n in names if n.startswith("nd-" + LAB_MARK) and n.count("-") >= 2]


TMP_PREFIX = "netdiag-lab-"         # a lab's files (ready files, nginx's) in tempdir/netdiag-lab-<tag>-XXXX


def cleanup(all_nd: bool = False) -> list[str]:
    """Remove lab namespaces left behind (their veths and rules go with them), and the temporary
    directory of each lab they were part of."""
    from netdiag.labs.topology import leftovers
    names = leftovers() if all_nd else lab_leftovers()
    removed = []
    for ns in names:
        kill_inside(ns)
        if _ip("netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    tags = {ns.split("-")[1] for ns in removed if ns.count("-") >= 2}
    for tag in tags:
        for d in glob.glob(os.path.join(tempfile.gettempdir(), f"{TMP_PREFIX}{glob.escape(tag)}-*")):
            shutil.rmtree(d, ignore_errors=True)
    return removed


def restore_sysctls(state_dir: str = STATE_DIR) -> list[str]:
    """Put back the node-wide sysctls that labs which did not finish had changed (from their
    state files); returns "path=value" for each one restored."""
    restored = []
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return restored
    for name in names:
        path = os.path.join(state_dir, name)
        try:
            with open(path) as f:
                st = json.load(f)
            with open(st["path"], "w") as f:
                f.write(str(int(st["value"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue                               # left in place: a later cleanup tries again
        os.unlink(path)
        restored.append(f"{st['path']}={st['value']}")
    return restored


def kill_inside(ns: str) -> None:
    """End the processes a killed lab left running inside its namespace (its load generator)."""
    p = _ip("netns", "pids", ns, check=False)
    for pid in (int(x) for x in p.stdout.split() if x.isdigit()):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def scope(record: dict, inodes: set) -> dict:
    """Keep only what happened in the lab's own namespaces (other work on the node is not the lab's)."""
    r = dict(record)
    r["destinations"] = [d for d in record["destinations"] if d["netns"] in inodes]
    r["listeners"] = [ls for ls in record.get("listeners", []) if ls["netns"] in inodes]
    if "processes" in record:
        r["processes"] = [p for p in record["processes"] if p["netns"] in inodes]
    if "nat" in record:
        r["nat"] = [n for n in record["nat"] if n["netns"] in inodes]
    if "conntrack_netns" in record:
        r["conntrack_netns"] = [n for n in record["conntrack_netns"] if n["netns"] in inodes]
    tot = dict(record["node_totals"])
    outs = [d for d in r["destinations"] if d["direction"] == "out"]
    for k in ("connects", "established", "failed", "active", "syn_retrans"):
        tot[k] = sum(d[k] for d in outs)
    for k in ("resets_in", "resets_out", "retrans"):
        tot[k] = sum(d[k] for d in r["destinations"])
    tot["listen_overflows"] = sum(ls["overflows"] for ls in r["listeners"] if not ls.get("overflows_shared"))
    r["node_totals"] = tot
    return r


class LabRunner:
    def __init__(self, scenario: str, params: dict | None = None, keep: bool = False,
                 allow_host_sysctl: bool = False, sinks=(), on_status=None):
        self.sc = SCENARIOS[scenario]
        self.params = self.sc.validate(params or {}, allow_host_sysctl)     # before anything is built
        self.keep = keep
        self.allow_host_sysctl = allow_host_sysctl
        self.sinks = list(sinks)        # netdiag/sinks/: each interval record, then the result
        self.on_status = on_status or (lambda msg: None)
        self.stop_event = threading.Event()
        self.procs: list = []
        self.topo = None
        self.pipeline = None
        self.diag = Diagnoser()
        self.error = None
        self._ct_max_saved = None
        self.tag = new_tag()

    # -- host conntrack max (only with --allow-host-sysctl) -------------------------------------
    def conntrack_max(self) -> int:
        with open(CT_MAX) as f:
            return int(f.read())

    def _set_ct_max(self) -> None:
        want = self.params.get("max") or 0
        if self.sc.name != "conntrack-full" or not want:
            return
        if not self.allow_host_sysctl:
            raise LabError("--max changes the node-wide net.netfilter.nf_conntrack_max: add --allow-host-sysctl "
                           "(it is restored on exit)")
        self._ct_max_saved = self.conntrack_max()
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        state = os.path.join(STATE_DIR, f"{self.tag}.json")
        fd = os.open(state + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"path": CT_MAX, "value": self._ct_max_saved}, f)
        os.replace(state + ".tmp", state)
        with open(CT_MAX, "w") as f:
            f.write(str(want))

    def _restore_ct_max(self) -> None:
        if self._ct_max_saved is not None:
            with open(CT_MAX, "w") as f:
                f.write(str(self._ct_max_saved))
            self._ct_max_saved = None
            try:
                os.unlink(os.path.join(STATE_DIR, f"{self.tag}.json"))
            except FileNotFoundError:
                pass

    # -- run ------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> dict:
        """Build, watch, drive, clean up; hands every interval record and then the result (the
        returned dict) to the sinks."""
        from netdiag.pipeline.collector import Watcher
        from netdiag.pipeline.run import Pipeline
        tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.tag}-")   # `lab cleanup` finds it by the tag
        ctx = Ctx(self, self.params, tmp)
        t0 = time.time()
        try:
            self.on_status(f"building namespaces (nd-{self.tag}-*)")
            self.topo = BUILD[self.sc.name](ctx, self.tag)
            self._set_ct_max()
            inodes = {os.stat(f"/run/netns/{ns}").st_ino for ns in self.topo.namespaces}
            client_inode = os.stat(f"/run/netns/{self.topo.client}").st_ino
            if self.sc.watch_client_only:
                inodes = {client_inode}
            self.on_status("attaching probes (BPF compile takes a few seconds)")
            watcher = Watcher(netns=client_inode if self.sc.watch_client_only else None,
                              per_process=self.sc.per_process, syscall_tracepoints=self.sc.accepts)
            self.pipeline = Pipeline(watcher,
                                     self.diag, sinks=self.sinks, scope=lambda rec: scope(rec, inodes))
            self.pipeline.start()
            if self.stop_event.is_set():
                raise KeyboardInterrupt
            self.pipeline.open({"scenario": self.sc.name, "modes": self.pipeline.watcher.plan})
            done = threading.Event()

            def drive():
                try:
                    RUN[self.sc.name](ctx, self.topo)
                except Exception as e:          # reported with the result
                    if not self.stop_event.is_set():
                        self.error = f"{type(e).__name__}: {e}"
                finally:
                    done.set()
            self.on_status(f"running {self.sc.name} {self._param_text()}")
            threading.Thread(target=drive, name="lab-load", daemon=True).start()
            tail = {}

            def over(now: float) -> bool:
                # the workload ended: keep watching for the scenario's tail
                if done.is_set() and "until" not in tail:
                    tail["until"] = now + self.sc.tail_s
                return "until" in tail and now >= tail["until"]
            interrupted = self.pipeline.run(self.sc.interval, self.stop_event,
                                            deadline=time.monotonic() + self.sc.max_s, until=over)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            for s in self.sinks:            # a live view gives the terminal back
                s.close(None)
            raise
        finally:
            self.stop_event.set()
            for p in self.procs:
                p.stop()
            if self.pipeline is not None:
                self.pipeline.close()
            self._restore_ct_max()
            if self.topo is not None and not self.keep:
                for ns in self.topo.namespaces:
                    kill_inside(ns)
                self.topo.close()
            shutil.rmtree(tmp, ignore_errors=True)
        result = {"type": "lab", "scenario": self.sc.name, "params": self.params, "expected": self.sc.verdict,
                  "seed": self.sc.seed, "namespaces": list(self.topo.namespaces) if self.keep and self.topo else [],
                  "kept": bool(self.keep), "intervals": self.pipeline.intervals if self.pipeline else 0,
                  "duration_s": round(time.time() - t0, 1), "interrupted": interrupted, "error": self.error,
                  "notes": ctx.notes, "load": ctx.load, "verdicts": self.diag.all()}
        for s in self.sinks:
            s.close(result)
        return result

    def _param_text(self) -> str:
        return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.params.items())


class LabError(NetdiagError):
    exit_code = EXIT_DATAERR
