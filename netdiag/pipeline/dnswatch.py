"""Domains and pods on interval records (--dns, --per-domain, --per-pod, --resolve).

The pipeline (netdiag/pipeline/run.py) starts an ``Enricher`` next to the collector, calls
``apply(record)`` on each collected record before diagnosis, adds ``verdicts(record)`` to the
diagnosis's, and ``close()``s it at the end.
"""
from __future__ import annotations


class Enricher:
    """Domains, pods and DNS statistics on each interval record, and the DNS verdict."""

    def __init__(self, dns: bool = True, per_domain: bool = False, per_pod: bool = False,
                 resolve: bool = False, dns_share: float = 0.5, netns: int | None = None,
                 host_root: str = "/", observer=None, dns_capture: str = "auto"):
        self.dns = dns or per_domain
        self.per_domain, self.per_pod, self.resolve = per_domain, per_pod, resolve
        self.dns_share = dns_share
        self.netns = netns
        self.host_root = host_root
        self.observer = observer
        self.dns_capture = dns_capture
        self.pods = None
        self.reverse = None
        self.note = None

    @property
    def program(self) -> str | None:
        """Where the DNS capture's programs came from ("compiled" or "cached"); None without any."""
        return self.observer.program if self.observer is not None else None

    def start(self) -> "Enricher":
        if self.dns and self.observer is None:
            from netdiag.sources.dns.observer import DnsObserver
            try:
                from pathlib import Path
                self.observer = DnsObserver(netns_filter=self.netns, capture=self.dns_capture,
                                            run=Path(self.host_root, "run", "netns")).start()
            except OSError as e:             # no CAP_NET_RAW: connections stay unnamed, and we say so
                self.observer, self.note = None, f"DNS capture unavailable: {e}"
            else:
                if self.observer.fallback:
                    self.note = f"DNS capture on {self.observer.mode} ({self.observer.fallback})"
        if self.per_pod or self.per_domain:
            from netdiag.sources.pods import PodMap
            self.pods = PodMap(self.host_root, proc="/proc")
        if self.resolve:
            from netdiag.analysis.domains import ReverseResolver
            self.reverse = ReverseResolver()
        return self

    def apply(self, rec: dict) -> dict:
        from netdiag.analysis.domains import annotate, rollup_domains, rollup_pods
        annotate(rec, self.observer, pods=self.pods, reverse=self.reverse)
        if self.pods is not None:
            for p in rec.get("processes", []):
                p["pod"] = self.pods.label(p["netns"])
        rec.setdefault("modes", {})["dns"] = self.observer.mode if self.observer is not None else "off"
        if self.per_domain:
            rec["domains"] = rollup_domains(rec, per_pod=self.per_pod)
        if self.per_pod:
            rec["pods"] = rollup_pods(rec)
        return rec

    def hold(self):
        """A context in which the DNS capture's reader pauses (an interval is being made)."""
        import contextlib
        hold = getattr(self.observer, "hold", None)
        return hold() if hold is not None else contextlib.nullcontext()

    @property
    def names_verdicts(self) -> bool:
        """Do verdicts get ``domain`` and ``pods`` (--per-domain, --per-pod)?"""
        return self.per_domain or self.per_pod

    def verdicts(self, rec: dict) -> list[dict]:
        """The DNS verdict on an applied record (``dns_rate_limit_risk``), if any."""
        from netdiag.analysis.domains import dns_rate_limit_verdict
        v = dns_rate_limit_verdict(rec.get("dns"), share=self.dns_share)
        return [] if v is None else [v]

    def close(self) -> None:
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        if self.reverse is not None:
            self.reverse.close()
            self.reverse = None
