"""docs/k8s/: the alert rules pass `promtool check rules`, every alert has a promtool unit test that
fires it (and one that does not), the PrometheusRule holds exactly the rules file's groups, and
every manifest validates offline against the Kubernetes schemas (kubernetes-validate, strict).
kubernetes-validate has no schemas for the prometheus-operator's kinds: the PodMonitor is
checked against the DaemonSet it scrapes instead, and the PrometheusRule against the rules file
promtool checked."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import yaml

from netdiag.sinks.metrics import parse_listen

K8S = Path(__file__).resolve().parents[2] / "docs" / "k8s"
RULES = K8S / "netdiag-rules.yaml"
RULES_TEST = K8S / "netdiag-rules.test.yaml"
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
K8S_VERSION = "1.30.0"


def promtool(*args, cwd=K8S) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool not installed (scripts/setup.sh installs Debian's prometheus, which has it)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def documents():
    for f in sorted(K8S.glob("*.yaml")):
        if f in (RULES, RULES_TEST):
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                yield f.name, doc


def alerts() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_check_rules():
    p = promtool("check", "rules", RULES.name)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in p.stdout


def test_promtool_unit_tests():
    p = promtool("test", "rules", RULES_TEST.name)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_every_alert_has_a_firing_and_a_silent_case():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    want = {"NetdiagVerdict", "NetdiagConntrackFillHigh", "NetdiagListenOverflows", "NetdiagDnsNearLinkLocalLimit",
            "NetdiagSnatUtilizationHigh"}
    assert set(alerts()) == want
    for name in want:
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name}: no case that fires"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name}: no silent case"


def test_conntrack_alert_is_75_percent():
    rule, = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
             if r.get("alert") == "NetdiagConntrackFillHigh"]
    assert rule["expr"].strip().endswith("> 0.75")


def test_prometheusrule_holds_the_rules_file(tmp_path):
    pr = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["kind"] == "PrometheusRule"
    assert pr["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(pr["spec"]))
    p = promtool("check", "rules", str(tmp_path / "spec.yaml"))
    assert p.returncode == 0, p.stdout + p.stderr


def test_manifests_validate():
    docs = [(name, d) for name, d in documents() if d["kind"] not in OPERATOR_KINDS]
    assert {d["kind"] for _, d in docs} >= {"Namespace", "DaemonSet"}
    for name, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)       # raises on any error
    kinds = {d["kind"] for _, d in documents()}
    assert OPERATOR_KINDS <= kinds


def daemonset() -> dict:
    ds, = [d for _, d in documents() if d["kind"] == "DaemonSet"]
    return ds


def test_daemonset_exposes_metrics():
    ds = daemonset()
    pod = ds["spec"]["template"]
    c, = pod["spec"]["containers"]
    port, = [p for p in c["ports"] if p["name"] == "metrics"]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port["containerPort"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NETDIAG_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    # the kubelet expands $(NODE_IP); what netdiag then parses binds the node's IP, not 0.0.0.0
    value = env["NETDIAG_METRICS"]["value"].replace("$(NODE_IP)", "10.240.0.4")
    assert parse_listen(value) == ("10.240.0.4", port["containerPort"])


def test_podmonitor_scrapes_the_daemonset():
    ds = daemonset()
    pm, = [d for _, d in documents() if d["kind"] == "PodMonitor"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ds["metadata"]["namespace"] in pm["spec"]["namespaceSelector"]["matchNames"]
    names = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in names and ep["path"] == "/metrics"
