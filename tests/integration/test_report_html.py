"""`netdiag report --html` opened in a real headless browser (Debian's chromium): its five plots
load and render at their size, and the page makes no request (nothing leaves the file)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netdiag.analysis.diagnose import Diagnoser
from netdiag.offline.keys import with_keys
from netdiag.sinks.recorder import Recorder

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
CHROMIUM = shutil.which("chromium")
PROBE = ("<script>window.addEventListener('load',()=>{document.title='imgs:'+[...document.images]"
         ".filter(i=>i.complete&&i.naturalWidth==1000&&i.naturalHeight==400).length+' of '"
         "+document.images.length+' res:'+performance.getEntriesByType('resource').length})</script>")


def test_html_report_renders_in_chromium_and_fetches_nothing(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (scripts/setup.sh installs it)")
    d = Diagnoser()
    rec = Recorder(tmp_path / "r.ndrec", context={"node": "vm"}, flush_s=1e9)
    rec.open({})
    for line in (GOLDEN / "snat-cap.ndjson").read_text().splitlines():
        r = with_keys(json.loads(line))
        if r.get("type") == "interval":
            r["verdicts"] = d.update(r)
            rec.interval(r)
    rec.close(None)
    html = tmp_path / "report.html"
    p = subprocess.run([sys.executable, "-m", "netdiag", "report", str(tmp_path / "r.ndrec"), "--html", str(html)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    text = html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", text, re.I)
    # the probe script needs scripts allowed; the report itself carries none
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
                     .replace("</body>", PROBE + "</body>"))
    netlog = tmp_path / "net.json"
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=5000",
                          f"--log-net-log={netlog}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>([^<]*)</title>", out.stdout)
    assert m, out.stderr[-2000:]
    assert m.group(1) == "imgs:5 of 5 res:0", m.group(1)
    # no request of the page's in the browser's network log (only the file itself)
    log = netlog.read_text() if netlog.exists() else ""
    page_urls = {u for u in re.findall(r'"url":"([^"]+)"', log) if "127.0.0.1" in u or u.startswith("file:")}
    assert page_urls <= {probe.as_uri()}, page_urls
