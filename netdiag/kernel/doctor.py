"""The checks behind `netdiag doctor`: what this kernel offers and which hook each signal gets."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from netdiag.errors import FeatureMissing
from netdiag.kernel import features as F
from netdiag.kernel import tracefs
from netdiag.kernel.engine import MODES, SIGNALS, mode_available, plan_modes, signal_gaps

# what each field `signal_gaps` can name is, for the table, and what stands in for it
GAP_ROWS = {"drops_by_reason": ("drop reasons", "drops counted per namespace without a reason; listen overflows "
                                                "from the namespace's ListenOverflows (TcpExt) counter"),
            "resets_out_by_reason": ("reset reasons", "resets sent from a socket counted per destination "
                                                       "without a reason; those sent with no socket (NO_SOCKET) only "
                                                       "in the namespace's Tcp OutRsts counter")}


@dataclass
class Check:
    name: str
    status: str          # yes | no | skipped | stand-in
    detail: str
    fix: str = ""


def _yn(ok: bool) -> str:
    return "yes" if ok else "no"


def run_checks() -> dict:
    checks: list[Check] = []
    priv, priv_note = F.capabilities()
    checks.append(Check("privileges", _yn(priv), priv_note,
                        "" if priv else "run as root (sudo netdiag …) or grant CAP_BPF and CAP_PERFMON"))
    ok, note = F.bcc_importable()
    checks.append(Check("bcc", _yn(ok), note, "" if ok else "run scripts/setup.sh as root (installs python3-bpfcc)"))

    def privileged(name, fn, fix):
        if not priv:
            checks.append(Check(name, "skipped", "needs root"))
            return False
        ok, note = fn()
        checks.append(Check(name, _yn(ok), note, "" if ok else fix))
        return ok

    privileged("bpf() syscall", F.bpf_syscall,
               "kernel.unprivileged_bpf_disabled or a seccomp/LSM policy blocks bpf(); run on the host as root")
    ok, note = F.btf()
    checks.append(Check("BTF", _yn(ok), note, "" if ok else
                        "use a kernel with CONFIG_DEBUG_INFO_BTF=y (needed for netns and accept attribution)"))
    ok, note = F.kprobes()
    checks.append(Check("kprobes", _yn(ok), note, "" if ok else
                        "kernel built without CONFIG_KPROBES: netdiag falls back to tracepoints"))
    privileged("fentry", F.fentry, "BPF trampolines refused (lockdown/EPERM): netdiag falls back")
    try:
        root = tracefs.tracefs_root()
        checks.append(Check("tracefs", "yes", str(root)))
    except FeatureMissing as e:
        checks.append(Check("tracefs", "no", str(e), "mount -t tracefs none /sys/kernel/tracing"))
    used = sorted({tp for s in SIGNALS.values() for tp in s.common + s.tracepoints})
    for tp in used:
        cat, ev = tp.split(":")
        ok = tracefs.tracepoint_exists(cat, ev)
        checks.append(Check(f"tracepoint {tp}", _yn(ok), "present" if ok else "absent",
                            "" if ok else "kernel too old or tracepoint compiled out"))
    privileged("raw tracepoints", F.raw_tracepoint,
               "kernel < 4.17 or BPF_PROG_TYPE_RAW_TRACEPOINT refused: classic tracepoints are used")
    privileged("BTF tracepoints", F.btf_tracepoint,
               "tp_btf refused (kernel < 5.5 or no BTF): raw tracepoints, fields read by bpf_probe_read_kernel")
    privileged("ring buffer", F.ringbuf, "kernel < 5.8: netdiag uses the perf buffer instead")
    state, note = F.headers()
    checks.append(Check("kernel headers", {"matching": "yes", "stand-in": "stand-in", "missing": "no"}[state], note,
                        {"matching": "", "stand-in": "stand-in headers are enough: netdiag reads no struct through them",
                         "missing": "run scripts/setup.sh (installs/links headers for BCC)"}[state]))
    if priv:
        ok, note = F.conntrack_netlink()
        checks.append(Check("conntrack netlink", _yn(ok), note, "" if ok else
                            "modprobe nf_conntrack (apt-get install conntrack for the CLI)"))
    else:
        checks.append(Check("conntrack netlink", "skipped", "needs root"))

    dns_capture_checks(checks, priv)

    gaps = signal_gaps()
    for field_name, (label, instead) in GAP_ROWS.items():
        if field_name in gaps:
            checks.append(Check(label, "no", gaps[field_name], f"instead: {instead} (the record says null)"))
        else:
            checks.append(Check(label, "yes", "in the kernel's tracepoint"))

    # signals whose BPF path is optional: without it, netlink carries them
    netlink_fallback = {"snat": any(c.name == "conntrack netlink" and c.status == "yes" for c in checks)}
    modes, available = {}, {}
    feats = F.Features.probe(want_fentry=priv) if priv else F.Features.probe(want_fentry=False)
    for sig, spec in SIGNALS.items():
        available[sig] = {m: mode_available(spec, m, feats)[0] for m in MODES}
        try:
            modes[sig] = plan_modes([sig], "auto", feats)[sig]
        except FeatureMissing:
            modes[sig] = "netlink" if netlink_fallback.get(sig) else None
    checks.append(process_accepts_check(modes.get("accept")))
    bpf_works = priv and all(c.status == "yes" for c in checks if c.name in ("bpf() syscall", "bcc")) \
        and all(modes[s] for s in ("connect", "accept"))
    return {
        "kernel": os.uname().release,
        "checks": [asdict(c) for c in checks],
        "modes": modes,
        "available_modes": available,
        "headers": state,
        "unmeasured": gaps,
        "bpf_works": bool(bpf_works),
    }


def dns_capture_checks(checks: list[Check], priv: bool) -> None:
    """The DNS capture paths of --per-domain, in the order `--dns-capture auto` tries them; the
    packet sockets at the end always work."""
    from netdiag.kernel import dnsprog
    try:
        dnsprog.sock_cflags()
    except FeatureMissing as e:
        checks.append(Check("DNS capture: socket calls", "no", str(e),
                            f"{e}: --per-domain captures DNS with cgroup_skb programs or packet sockets"))
    else:
        checks.append(Check("DNS capture: socket calls", "yes", "sock:sock_send_length / sock_recv_length"))
    if not priv:
        checks.append(Check("DNS capture: cgroup_skb", "skipped", "needs root"))
        return
    ok, note = F.cgroup_skb_netns_cookie()
    checks.append(Check("DNS capture: cgroup_skb", _yn(ok), note, "" if ok else
                        f"{note}: --per-domain captures DNS from packet sockets (one per namespace)"))


def markdown(report: dict) -> str:
    """The report as the Markdown tables of docs/kernels.md: each check's status (and, where it
    is not "yes", what netdiag does instead), then the hook each signal gets and the ones it
    could get. Only what depends on the kernel: no paths, no counts."""
    lines = ["| check | status | where not: what netdiag does |", "|---|---|---|"]
    for c in report["checks"]:
        if c["name"] in ("privileges", "bcc"):
            continue
        note = "" if c["status"] == "yes" else (c["fix"] or c["detail"]).replace("|", "\\|")
        lines.append(f"| {c['name']} | {c['status']} | {note} |")
    lines += ["", "| signal | hook | hooks available |", "|---|---|---|"]
    for sig, mode in report["modes"].items():
        avail = ", ".join(m for m, ok in report["available_modes"][sig].items() if ok) or "none"
        lines.append(f"| {sig} | {mode or 'none'} | {avail} |")
    gaps = report.get("unmeasured") or {}
    lines += ["", "Not measurable here (null in the record): " +
              ("; ".join(f"`{k}`" for k in sorted(gaps)) if gaps else "nothing") + "."]
    return "\n".join(lines) + "\n"


def doc_section(text: str, label: str) -> str | None:
    """The generated part of docs/kernels.md for one kernel label, or None."""
    start, end = f"<!-- doctor {label} -->\n", f"<!-- /doctor {label} -->"
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0]

def process_accepts_check(accept_mode: str | None) -> Check:
    """How `watch --per-process` attributes inbound connections on this kernel."""
    if accept_mode in ("kprobe", "fentry"):
        return Check("process accepts", "yes", f"each accept() counted for the accepting process ({accept_mode} on "
                                               "inet_csk_accept runs in its context)")
    if accept_mode == "tracepoint":
        return Check("process accepts", "yes", "listener by default: a listener's connections go to the process "
                                               "that holds it; with `watch --accepts`, each accept() for the "
                                               "accepting process (syscalls:sys_exit_accept4 runs in its context)",
                     "`watch --per-process --accepts` for the accepting process (syscall tracepoints slow "
                     "every syscall a little)")
    return Check("process accepts", "no", "no accept hook: a listener's connections go to the process that holds it")
