"""PodMap on a fake node: /proc, /var/log/pods, /var/log/containers, a cgroup tree, a crictl."""
import json
import os
import stat

import pytest

from netdiag.sources.pods import PodMap, parse_cgroup_path, parse_container_log, parse_pod_log_dir

UID1 = "3f2a1b2c-0d4e-4f5a-8b6c-7d8e9f0a1b2c"
UID2 = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
CID_WEB = "a" * 64
CID_SIDE = "b" * 64
CID_PAUSE = "c" * 64
CID_API = "d" * 64
SYSTEMD = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{c}.scope")
CGROUPFS = "/kubepods/besteffort/pod{u}/{c}"


def test_parse_cgroup_paths():
    assert parse_cgroup_path(SYSTEMD.format(u=UID1.replace("-", "_"), c=CID_WEB)) == (UID1, CID_WEB)
    assert parse_cgroup_path(CGROUPFS.format(u=UID2, c=CID_API)) == (UID2, CID_API)
    assert parse_cgroup_path(f"/kubepods.slice/kubepods-pod{UID1.replace('-', '_')}.slice/crio-{CID_WEB}.scope") \
        == (UID1, CID_WEB)
    assert parse_cgroup_path("/system.slice/sshd.service") == (None, None)
    assert parse_pod_log_dir(f"default_web-0_{UID1}") == ("default", "web-0", UID1)
    assert parse_pod_log_dir("junk") is None
    assert parse_container_log(f"web-0_default_istio-proxy-{CID_SIDE}.log") == ("default", "web-0", "istio-proxy",
                                                                                CID_SIDE)
    assert parse_container_log("web-0_default_web.log") is None


def proc_entry(root, pid, netns_file, cgroup):
    d = root / "proc" / str(pid)
    (d / "ns").mkdir(parents=True)
    os.link(netns_file, d / "ns" / "net")        # same inode: the same "namespace"
    (d / "cgroup").write_text(f"0::{cgroup}\n")


@pytest.fixture
def node(tmp_path):
    root = tmp_path
    nsdir = root / "nsfiles"
    nsdir.mkdir()
    for n in ("host", "pod1", "pod2", "lab"):
        (nsdir / n).write_text("")
    ino = {n: os.stat(nsdir / n).st_ino for n in ("host", "pod1", "pod2", "lab")}
    proc_entry(root, 1, nsdir / "host", "/init.scope")
    proc_entry(root, 100, nsdir / "pod1", SYSTEMD.format(u=UID1.replace("-", "_"), c=CID_PAUSE))
    proc_entry(root, 101, nsdir / "pod1", SYSTEMD.format(u=UID1.replace("-", "_"), c=CID_WEB))
    proc_entry(root, 102, nsdir / "pod1", SYSTEMD.format(u=UID1.replace("-", "_"), c=CID_SIDE))
    proc_entry(root, 200, nsdir / "pod2", CGROUPFS.format(u=UID2, c=CID_API))
    proc_entry(root, 300, nsdir / "lab", "/user.slice/session-1.scope")
    (root / "run" / "netns").mkdir(parents=True)
    os.link(nsdir / "lab", root / "run" / "netns" / "nd-ab12-cli")
    logs = root / "var" / "log" / "pods"
    for c in ("web", "istio-proxy"):
        (logs / f"default_web-0_{UID1}" / c).mkdir(parents=True)
    (logs / f"shop_api-7d9f_{UID2}" / "api").mkdir(parents=True)
    cont = root / "var" / "log" / "containers"
    cont.mkdir(parents=True)
    (cont / f"web-0_default_web-{CID_WEB}.log").write_text("")
    (cont / f"web-0_default_istio-proxy-{CID_SIDE}.log").write_text("")
    (cont / f"api-7d9f_shop_api-{CID_API}.log").write_text("")
    cg = root / "sys" / "fs" / "cgroup" / "kubepods" / "besteffort" / f"pod{UID2}" / CID_API
    cg.mkdir(parents=True)
    return root, ino, cg


def test_netns_to_pod_and_containers(node):
    root, ino, _ = node
    pm = PodMap(root, crictl=None)
    p1 = pm.for_netns(ino["pod1"])
    assert p1["pod"] == "default/web-0" and p1["namespace"] == "default" and p1["uid"] == UID1
    assert p1["containers"] == ["istio-proxy", "web"] and p1["source"] == "kubernetes"
    assert pm.label(ino["pod2"]) == "shop/api-7d9f"
    assert pm.for_netns(ino["pod2"])["containers"] == ["api"]
    assert pm.for_netns(ino["host"]) == {"pod": "host", "name": "host", "source": "host"}
    assert pm.for_netns(ino["lab"]) == {"pod": "nd-ab12-cli", "name": "nd-ab12-cli", "source": "netns"}
    assert pm.for_netns(999999999)["pod"] == "netns:999999999"
    assert pm.kubernetes


def test_cgroup_path_and_id_to_pod(node):
    root, _, cg = node
    pm = PodMap(root, crictl=None)
    p = pm.for_cgroup(SYSTEMD.format(u=UID1.replace("-", "_"), c=CID_SIDE))
    assert p["pod"] == "default/web-0" and p["containers"] == ["istio-proxy"]
    p = pm.for_cgroup(os.stat(cg).st_ino)
    assert p["pod"] == "shop/api-7d9f" and p["containers"] == ["api"]
    assert pm.for_cgroup("/system.slice/cron.service") is None


def test_crictl_fills_pods_without_logs(node, tmp_path):
    root, ino, _ = node
    uid3 = "12345678-1234-4234-8234-123456789abc"
    nsf = root / "nsfiles" / "pod3"
    nsf.write_text("")
    proc_entry(root, 400, nsf, CGROUPFS.format(u=uid3, c="e" * 64))
    (root / "run" / "containerd").mkdir(parents=True)
    (root / "run" / "containerd" / "containerd.sock").write_text("")
    pods = {"items": [{"id": "e" * 64, "metadata": {"name": "batch-x", "namespace": "jobs", "uid": uid3}}]}
    ps = {"containers": [{"id": "f" * 64, "metadata": {"name": "worker"},
                          "labels": {"io.kubernetes.pod.uid": uid3, "io.kubernetes.pod.namespace": "jobs",
                                     "io.kubernetes.pod.name": "batch-x", "io.kubernetes.container.name": "worker"}}]}
    fake = tmp_path / "crictl"
    fake.write_text("#!/bin/sh\ncase \"$*\" in *' pods '*) cat <<'E'\n" + json.dumps(pods) + "\nE\n;; *) cat <<'E'\n"
                    + json.dumps(ps) + "\nE\n;; esac\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    pm = PodMap(root, crictl=str(fake))
    p = pm.for_netns(os.stat(nsf).st_ino)
    assert p["pod"] == "jobs/batch-x" and p["containers"] == ["worker"]
    broken = PodMap(root, crictl=str(tmp_path / "missing-crictl"))
    assert broken.for_netns(ino["pod1"])["pod"] == "default/web-0" and broken.cri_note
