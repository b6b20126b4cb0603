"""The watch options and rendering for --per-domain / --per-pod, with a fake observer."""
import io

import click
from click.testing import CliRunner

from netdiag.commands.watch import dns_options
from netdiag.pipeline.dnswatch import Enricher
from netdiag.sinks.live import rollup_tables
from netdiag.sinks.plain import print_plain_rollups
from netdiag.sinks.text import verdict_line

from .test_dns_attribute import NS1, FakePods, lab_observer, record, row


def test_options_parse():
    seen = {}

    @click.command()
    @dns_options
    def cmd(**kw):
        seen.update(kw)

    r = CliRunner().invoke(cmd, ["--per-domain", "--per-pod", "--resolve", "--dns-share", "0.25", "--host-root", "/"])
    assert r.exit_code == 0, r.output
    # DNS capture is off unless asked: --per-domain turns it on in the Enricher, --dns alone too
    assert seen == {"dns": False, "per_domain": True, "per_pod": True, "resolve": True, "dns_share": 0.25,
                    "host_root": "/", "dns_capture": "auto"}
    CliRunner().invoke(cmd, ["--dns-capture", "packet"])
    assert seen["dns_capture"] == "packet"
    r = CliRunner().invoke(cmd, ["--dns-capture", "tap"])
    assert r.exit_code == 2 and "tap" in r.output
    CliRunner().invoke(cmd, ["--dns"])
    assert seen["dns"] is True
    CliRunner().invoke(cmd, ["--no-dns"])
    assert seen["dns"] is False


def lab_rows():
    return [row("198.18.7.1:8080", NS1, connects=3, established=3), row("198.18.7.2:8080", NS1, connects=2),
            row("198.18.7.1:8080", 12, connects=5)]


def test_enricher_apply_and_render():
    e = Enricher(per_domain=True, per_pod=True, observer=lab_observer(), dns_share=0.001)
    e.pods = FakePods()
    rec = e.apply(record(lab_rows()))
    assert rec["modes"]["dns"] == "packet"
    assert {(r["pod"], r["name"]) for r in rec["domains"]} >= {("default/web-1", "other.lab.test"),
                                                              ("shop/api-0", "api.lab.test")}
    assert {p["pod"] for p in rec["pods"]} == {"default/web-1", "shop/api-0"}
    rec["verdicts"] = e.verdicts(rec)
    assert rec["verdicts"][-1]["kind"] == "dns_rate_limit_risk"       # 8 pkt/s over a 1-pkt/s threshold
    buf = io.StringIO()
    print_plain_rollups(rec, 10, buf)
    text = buf.getvalue()
    assert "dom default/web-1 other.lab.test" in text and "pod shop/api-0" in text
    assert verdict_line(rec["verdicts"][-1]).startswith("dns_rate_limit_risk")
    from rich.console import Console
    con = Console(file=io.StringIO(), width=160)
    for t in rollup_tables(rec, 10):
        con.print(t)
    assert "gone.lab.test" in con.file.getvalue()


def test_enricher_without_flags_only_names_domains():
    e = Enricher(observer=lab_observer())
    rec = e.apply(record(lab_rows()))
    assert "domains" not in rec and "pods" not in rec
    assert rec["destinations"][0]["domain"] == "other.lab.test"
