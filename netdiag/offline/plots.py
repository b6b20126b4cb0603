"""The report's plots (matplotlib, Agg: no display) as PNG files or one self-contained HTML file
(images inline as data: URIs, no script, nothing fetched)."""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
from pathlib import Path

from netdiag.errors import OutputError

WIDTH_IN, HEIGHT_IN, DPI = 10, 4, 100          # every plot is 1000 x 400 pixels
PLOTS = ("active", "rates", "snat", "conntrack", "dns")
TITLES = {"active": "Active connections per destination (verdict spans shaded)",
          "rates": "Connects, failures and resets per second",
          "snat": "SNAT ports in use against the range",
          "conntrack": "Conntrack table fill",
          "dns": "DNS packets per second"}
TOP_DSTS = 8


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _times(ts):
    return [_dt.datetime.fromtimestamp(float(t), _dt.timezone.utc) for t in ts]


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the input", ha="center", va="center", transform=ax.transAxes, color="gray")


def _active(ax, rep) -> None:
    dst = rep.frames.get("destinations")
    if dst is None or dst.empty:
        return _empty(ax, "destinations")
    out = dst[dst["direction"] == "out"]
    if out.empty:
        out = dst
    peaks = out.groupby(["node", "dst"], observed=True)["active"].max().sort_values(ascending=False).head(TOP_DSTS)
    for node, d in peaks.index:
        rows = out[(out["node"] == node) & (out["dst"] == d)].groupby("ts", observed=True)["active"].sum()
        label = d if len(rep.nodes) == 1 else f"{node} {d}"
        ax.plot(_times(rows.index), rows.values, label=label)
    for v in rep.verdicts:
        if v.get("first_ts") is not None:
            a, b = _times([v["first_ts"], v["last_ts"]])
            ax.axvspan(a, b, alpha=0.15, color="red")
            ax.text(a, ax.get_ylim()[1] * 0.95, v["kind"], fontsize=7, color="darkred", va="top")
    ax.set_ylabel("active")
    ax.legend(fontsize=7, loc="upper left")


def _rates(ax, rep) -> None:
    iv = rep.frames.get("intervals")
    if iv is None or iv.empty:
        return _empty(ax, "intervals")
    for node, g in iv.groupby("node", observed=True):
        t = _times(g["ts"])
        dt = g["interval_s"].where(g["interval_s"] > 0)
        sfx = "" if len(rep.nodes) == 1 else f" {node}"
        ax.plot(t, g["nt_connects"] / dt, label="connects/s" + sfx)
        ax.plot(t, g["nt_failed"] / dt, label="failed/s" + sfx)
        ax.plot(t, (g["nt_resets_in"] + g["nt_resets_out"]) / dt, label="resets/s" + sfx)
    ax.set_ylabel("per second")
    ax.legend(fontsize=7, loc="upper left")


def _snat(ax, rep) -> None:
    nat = rep.frames.get("nat")
    if nat is None or nat.empty:
        return _empty(ax, "SNAT data")
    for (node, ip, d), g in nat.groupby(["node", "nat_ip", "dst"], observed=True):
        t = _times(g["ts"])
        line, = ax.plot(t, g["ports_in_use"], label=f"{ip} → {d}" + ("" if len(rep.nodes) == 1 else f" ({node})"))
        rng = g["port_range"].dropna()
        if not rng.empty:
            ax.axhline(rng.max(), color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_ylabel("ports in use (dashed: range)")
    ax.legend(fontsize=7, loc="upper left")


def _conntrack(ax, rep) -> None:
    iv = rep.frames.get("intervals")
    plotted = False
    if iv is not None and not iv.empty:
        for node, g in iv.groupby("node", observed=True):
            ct = g["nt_conntrack"].dropna()
            if ct.empty:
                continue
            vals = [json.loads(x) for x in ct]
            fill = [(c.get("entries") or 0) / c["max"] if c.get("max") else None for c in vals]
            ax.plot(_times(g.loc[ct.index, "ts"]), fill, label=node)
            plotted = True
    if not plotted:
        return _empty(ax, "conntrack data")
    ax.set_ylabel("entries / max")
    ax.legend(fontsize=7, loc="upper left")


def _dns(ax, rep) -> None:
    iv = rep.frames.get("intervals")
    plotted = False
    if iv is not None and not iv.empty:
        for node, g in iv.groupby("node", observed=True):
            d = g["dns"].dropna()
            vals = [json.loads(x) for x in d]
            pts = [(t, v.get("pps")) for t, v in zip(g.loc[d.index, "ts"], vals) if v.get("pps") is not None]
            if pts:
                ax.plot(_times([p[0] for p in pts]), [p[1] for p in pts], label=node)
                plotted = True
    if not plotted:
        return _empty(ax, "DNS data (record with --dns or --per-domain)")
    ax.set_ylabel("packets/s")
    ax.legend(fontsize=7, loc="upper left")


DRAW = {"active": _active, "rates": _rates, "snat": _snat, "conntrack": _conntrack, "dns": _dns}


def figures(rep) -> dict:
    """{name: PNG bytes} for every plot, always the five of PLOTS."""
    plt = _plt()
    out = {}
    for name in PLOTS:
        fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
        try:
            DRAW[name](ax, rep)
            ax.set_title(TITLES[name], fontsize=10)
            fig.autofmt_xdate()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI)
            out[name] = buf.getvalue()
        finally:
            plt.close(fig)
    return out


def _write(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None


def write_pngs(rep, directory) -> list[Path]:
    d = Path(directory)
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{d}: cannot create directory ({e.strerror})") from None
    paths = []
    for name, data in figures(rep).items():
        p = d / f"{name}.png"
        _write(p, data)
        paths.append(p)
    return paths


def write_html(rep, path) -> None:
    figs = figures(rep)
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
             "style-src 'unsafe-inline'\">",
             f"<title>netdiag report: {esc(', '.join(rep.nodes))}</title>",
             "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}h2{margin-top:1.5em}.v{background:#fee}</style>",
             "</head><body>", f"<h1>netdiag report: {esc(', '.join(rep.nodes))}</h1>"]
    for n in rep.notes:
        parts.append(f"<p class='v'>{esc(n)}</p>")
    parts.append("<h2>Verdicts</h2>")
    if not rep.verdicts:
        parts.append("<p>none</p>")
    for v in rep.verdicts:
        parts.append(f"<div class='v'><b>{esc(v['kind'])}</b> on {esc(str(v.get('node')))} "
                     f"dst {esc(str(v.get('dst') or v.get('listener')))}: {esc(str(v.get('where')))}<br>"
                     f"evidence: {esc(json.dumps(v.get('evidence'), default=str))}<br>"
                     f"fix: {esc(str(v.get('advice')))}</div>")
    for name in PLOTS:
        b64 = base64.b64encode(figs[name]).decode()
        parts.append(f"<h2>{esc(TITLES[name])}</h2><img class='plot' alt='{name}' "
                     f"width='{WIDTH_IN * DPI}' height='{HEIGHT_IN * DPI}' src='data:image/png;base64,{b64}'>")
    for name, df in rep.tables.items():
        parts.append(f"<h2>{esc(name)}</h2>" + df.head(200).to_html(index=False, na_rep="", border=0))
    parts.append("</body></html>")
    _write(Path(path), "\n".join(parts).encode())
