"""`netdiag report`'s engine: read recordings and `watch --json` NDJSON, replay the diagnosis over
the recorded intervals (the same ``Diagnoser`` the live run used), and aggregate with pandas into
the tables docs/commands/report.md describes."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

from netdiag.analysis.diagnose import Diagnoser
from netdiag.analysis.domains import dns_rate_limit_verdict, name_verdicts
from netdiag.analysis.thresholds import Thresholds
from netdiag.errors import BadInput
from netdiag.offline import format as fm
from netdiag.offline import validate
from netdiag.offline.keys import parse_endpoint, with_keys

ERRNO_PREFIX = "failed_"
REASON_PREFIX = "reset_"


# -- input ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Source:
    path: str
    kind: str                       # "recording" | "ndjson" | "snapshot"
    node: str | None
    records: list                   # interval records
    meta: dict
    summaries: list
    notes: list
    tables: dict | None = None      # pyarrow tables (recordings)
    rec: object = None              # the format.Recording (recordings): records decoded on demand

    def iter_records(self, only=None):
        if self.rec is not None:
            yield from fm.iter_records(self.rec, only=only)
        else:
            yield from self.records

    def count(self) -> int:
        if self.rec is not None:
            t = self.tables.get("intervals")
            return t.num_rows if t is not None else 0
        return len(self.records)

    def first_ts(self) -> float:
        if self.rec is not None:
            t = self.tables.get("intervals")
            return float(t.column("ts")[0].as_py()) if t is not None and t.num_rows else 0.0
        return self.records[0]["ts"] if self.records else 0.0

    def frames(self, node: str, since, until) -> dict:
        """pandas frames of this source's tables (node named), within [since, until]."""
        if self.rec is not None:
            tabs = {k: t for k, t in self.tables.items() if k in fm.TABLES}
        else:
            tabs = fm.encode([r for r in self.records if (r.get("node") or self.node) == node], 0, node)
        import pyarrow.compute as pc
        out = {}
        for k, t in tabs.items():
            if since is not None:
                t = t.filter(pc.greater_equal(t["ts"], since))
            if until is not None:
                t = t.filter(pc.less_equal(t["ts"], until))
            df = t.to_pandas()
            df["node"] = node
            out[k] = df
        return out


def expand(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (fm.SUFFIX, ".ndjson", ".json") and q.is_file())
            if not found:
                raise BadInput(f"{p}: no recordings (*{fm.SUFFIX}) or NDJSON files in this directory")
            out.extend(found)
        else:
            out.append(p)
    return out


def load(path) -> Source:
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if fm.is_recording(path):
        rec = fm.read(path)
        validate.recording(rec)
        notes = [f"{path}: a partial last flush ({rec.truncated} bytes) was dropped: the recorder stopped "
                 f"without closing the file"] if rec.truncated else []
        kind = "snapshot" if rec.meta.get("kind") == "snapshot" else "recording"
        ctx = rec.meta.get("context") or {}
        return Source(str(path), kind, ctx.get("node"), [], rec.meta, fm.json_rows(rec, "summary"), notes,
                      rec.tables, rec if kind == "recording" else None)
    return _load_ndjson(path)


def _load_ndjson(path: Path) -> Source:
    records, summaries = [], []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))      # strict: no encoded surrogates
                validate.no_lone_surrogates(obj, line)
            except (ValueError, RecursionError):
                what = "truncated" if not line.endswith(b"\n") else "corrupt"
                raise BadInput(f"{path}:{i}: not a netdiag recording or watch --json NDJSON ({what} line)") from None
            if not isinstance(obj, dict):
                raise BadInput(f"{path}:{i}: not a watch --json object")
            t = obj.get("type")
            if t == "interval":
                records.append(validate.interval(obj, f"{path}:{i}"))
            elif t in ("summary", "lab"):
                if not validate.depth_ok(obj):
                    raise BadInput(f"{path}:{i}: {t} object nested deeper than {validate.MAX_DEPTH}")
                summaries.append(obj)
            else:
                raise BadInput(f"{path}:{i}: not a watch --json object (type {t!r})")
    node = records[0].get("node") if records else None
    return Source(str(path), "ndjson", node, records, {}, summaries, [])


# -- options ----------------------------------------------------------------------------------------
def thresholds(pairs) -> Thresholds:
    """NAME=VALUE pairs over the defaults; ValueError names the bad one."""
    fields = {f.name: f for f in dataclasses.fields(Thresholds)}
    kw = {}
    for p in pairs or ():
        name, sep, value = p.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(f"unknown threshold {name!r} (known: {', '.join(fields)})")
        typ = int if fields[name].type in (int, "int") else float
        try:
            kw[name] = typ(value)
        except ValueError:
            raise ValueError(f"threshold {name}: {value!r} is not {'an integer' if typ is int else 'a number'}") from None
    return Thresholds(**kw)


@dataclasses.dataclass
class Filters:
    since: float | None = None
    until: float | None = None
    dst: str | None = None
    domain: str | None = None
    pod: str | None = None
    node: str | None = None

    def net(self):
        return ipaddress.ip_network(self.dst, strict=False) if self.dst else None


def in_net(dst: str | None, net) -> bool:
    if net is None:
        return True
    if not dst:
        return False
    try:
        return ipaddress.ip_address(parse_endpoint(dst).addr) in net
    except ValueError:
        return False


# -- replay -----------------------------------------------------------------------------------------
def replay(records, th: Thresholds, dns_share: float = 0.5, stats: dict | None = None) -> list:
    """Run the diagnosis again over one node's records (any iterable, in order) and return every
    verdict of the run. ``stats`` gets ``n`` (records), ``has_live`` (every record carried its live
    verdicts) and ``match`` (the replay's verdicts equal them, interval by interval)."""
    d = Diagnoser(th)
    named: dict = {}
    dns_seen: dict = {}
    stats = stats if stats is not None else {}
    stats.update(n=0, match=True, has_live=True)
    naming = False
    for rec in records:
        stats["n"] += 1
        r = with_keys({k: v for k, v in rec.items() if k != "verdicts"})
        vs = d.update(r)
        if "dns" in r:
            v = dns_rate_limit_verdict(r.get("dns"), share=dns_share)
            if v is not None:
                old = dns_seen.get(v["kind"])
                vs.append(dict(v))
                v.update(first_ts=old["first_ts"] if old else r["ts"], last_ts=r["ts"],
                         intervals=(old["intervals"] + 1) if old else 1)
                dns_seen[v["kind"]] = v
        naming = "domains" in r or "pods" in r
        if naming:
            name_verdicts(vs, r, named)
        if "verdicts" not in rec:
            stats["has_live"] = False
        elif stats["match"] and not same_verdicts(rec["verdicts"], vs):
            stats["match"] = False
    allv = d.all() + list(dns_seen.values())
    if naming:
        for v in allv:
            key = (v.get("kind"), v.get("netns"), v.get("dst") or v.get("listener"))
            if key in named:
                v.setdefault("domain", named[key][0])
                v.setdefault("pods", named[key][1])
    return allv


def recorded_verdicts(records, stats: dict) -> list:
    """The run's verdicts from those each interval recorded (no diagnosis). A standing verdict is
    recorded with its ``first_ts``, ``last_ts``, ``intervals`` and largest number so far, so its
    last recorded state is its state at the end of the run; verdicts recorded without them (the
    DNS verdict) get them here."""
    run: dict = {}
    for rec in records:
        stats["n"] += 1
        for v in rec.get("verdicts") or ():
            key = (v.get("kind"), v.get("netns"), v.get("dst") or v.get("listener"))
            v = dict(v)
            if "first_ts" not in v:
                old = run.get(key)
                v.update(first_ts=old["first_ts"] if old else rec["ts"], last_ts=rec["ts"],
                         intervals=old["intervals"] + 1 if old else 1)
            run[key] = v
    return list(run.values())


def same_verdicts(a: list, b: list) -> bool:
    def key(v):
        return json.dumps(v, sort_keys=True)
    return sorted(map(key, a)) == sorted(map(key, b))


# -- tables (pandas) --------------------------------------------------------------------------------
def _expand_json(df, col: str, prefix: str):
    """A JSON-object column ({"ETIMEDOUT": 3}) as numeric columns prefix+key, empty objects skipped."""
    import pandas as pd
    s = df[col].dropna()
    s = s[s != "{}"]
    if s.empty:
        return pd.DataFrame(index=df.index)
    wide = pd.json_normalize(s.map(json.loads).tolist()).set_index(s.index).add_prefix(prefix)
    return wide.reindex(df.index).fillna(0).astype("int64")


def _peak(df, keys: list, col: str = "active"):
    """Per group: the largest ``col`` and the ts of its first occurrence."""
    idx = df.groupby(keys, dropna=False, sort=False)[col].idxmax()
    out = df.loc[idx, keys + [col, "ts"]].rename(columns={col: "peak_" + col, "ts": "peak_ts"})
    return out.set_index(keys)


COUNTERS = ["connects", "established", "failed", "resets_in", "resets_out", "syn_retrans", "retrans"]


def destination_table(dst, keys):
    import pandas as pd
    if dst.empty:
        return pd.DataFrame()
    df = dst                                   # no copy: an hour of rows is large
    g = df.groupby(keys, dropna=False, sort=False)
    sums = g[COUNTERS].sum()
    for col, prefix in (("failed_by_errno", ERRNO_PREFIX), ("resets_out_by_reason", REASON_PREFIX)):
        wide = _expand_json(df, col, prefix)
        if not wide.columns.empty:
            sums = sums.join(wide.groupby([df[k] for k in keys], dropna=False, sort=False).sum())
    peak = _peak(df, keys)
    lat = df[df["connect_ms_avg"].notna() & (df["established"] > 0)]
    pct = pd.DataFrame(index=sums.index)
    if not lat.empty:
        lg = lat.groupby(keys, dropna=False, sort=False)["connect_ms_avg"]
        pct = pd.concat({"connect_ms_p50": lg.quantile(0.5), "connect_ms_p90": lg.quantile(0.9),
                         "connect_ms_p99": lg.quantile(0.99), "connect_ms_max": lg.max()}, axis=1)
    snat = df["snat"].dropna()
    sn = pd.DataFrame(index=sums.index)
    if not snat.empty:
        s = pd.json_normalize(snat.map(json.loads).tolist()).set_index(snat.index)
        s = pd.concat([df.loc[snat.index, keys], s[["ports_in_use", "port_range"]]], axis=1)
        sg = s.groupby(keys, dropna=False, sort=False)
        sn = pd.concat({"snat_ports_peak": sg["ports_in_use"].max(), "snat_port_range": sg["port_range"].max()},
                       axis=1)
    out = sums.join(peak).join(pct).join(sn)
    out = out.sort_values(["failed", "peak_active"], ascending=False)
    return out.reset_index()


def rollup_table(dst, by: str, keys_extra=("node",)):
    """Destinations rolled up by domain or pod: peaks of the summed active per interval."""
    import pandas as pd
    df = dst[dst[by].notna()] if by in dst else dst.iloc[0:0]
    if df.empty:
        return pd.DataFrame()
    keys = [*keys_extra, by]
    per_iv = df.groupby(keys + ["interval", "ts"], dropna=False, sort=False)[COUNTERS + ["active"]].sum()
    per_iv = per_iv.reset_index()
    sums = per_iv.groupby(keys, dropna=False, sort=False)[COUNTERS].sum()
    peak = _peak(per_iv, keys)
    return sums.join(peak).sort_values("peak_active", ascending=False).reset_index()


def node_table(iv):
    import pandas as pd
    if iv.empty:
        return pd.DataFrame()
    df = iv.rename(columns={"nt_" + c: c for c in COUNTERS + ["active", "listen_overflows"]})
    g = df.groupby("node", sort=True)
    sums = g[COUNTERS + ["listen_overflows", "lost_events", "evictions"]].sum()
    peak = _peak(df, ["node"])
    span = pd.concat({"intervals": g.size(), "first_ts": g["ts"].min(), "last_ts": g["ts"].max()}, axis=1)
    hist = _expand_json(df, "nt_connect_latency_hist", "")
    out = span.join(sums).join(peak)
    if not hist.columns.empty:
        h = pd.concat([df[["node"]], hist], axis=1).groupby("node").sum()
        for q in (0.5, 0.9, 0.99):
            out[f"connect_p{int(q * 100)}_bucket"] = h.apply(lambda row: _hist_q(row, q), axis=1)
    ct = df["nt_conntrack"].dropna()
    if not ct.empty:
        c = pd.json_normalize(ct.map(json.loads).tolist()).set_index(ct.index)
        if {"entries", "max"} <= set(c.columns):
            c["node"] = df.loc[ct.index, "node"]
            c["fill"] = c["entries"] / c["max"].where(c["max"] > 0)
            cg = c.groupby("node")
            out = out.join(pd.concat({"conntrack_peak_entries": cg["entries"].max(), "conntrack_max": cg["max"].max(),
                                      "conntrack_peak_fill": cg["fill"].max().round(4)}, axis=1))
    return out.reset_index()


def _hist_q(row, q: float):
    """The log2 bucket (its lower bound, e.g. "64us") holding quantile q of a histogram row."""
    items = sorted(((int(k[:-2]), n) for k, n in row.items() if k.endswith("us") and n > 0))
    total = sum(n for _, n in items)
    if not total:
        return None
    acc = 0
    for lo, n in items:
        acc += n
        if acc >= q * total:
            return f"{lo}us"
    return f"{items[-1][0]}us"


def nat_table(nat):
    import pandas as pd
    if nat.empty:
        return pd.DataFrame()
    keys = ["node", "netns_name", "nat_ip", "dst"]
    g = nat.groupby(keys, dropna=False, sort=False)
    out = pd.concat({"ports_peak": g["ports_in_use"].max(), "port_range": g["port_range"].max(),
                     "utilization_peak": g["utilization"].max(), "allocations": g["allocations"].sum(),
                     "insert_failed": g["insert_failed"].sum(), "drop": g["drop"].sum()}, axis=1)
    return out.reset_index()


def conntrack_table(ct):
    import pandas as pd
    if ct.empty:
        return pd.DataFrame()
    keys = ["node", "name"]
    g = ct.groupby(keys, dropna=False, sort=False)
    out = pd.concat({"entries_peak": g["entries"].max(), "max": g["max"].max(), "fill_peak": g["fill"].max(),
                     "insert_failed": g["insert_failed"].sum(), "drop": g["drop"].sum(),
                     "early_drop": g["early_drop"].sum()}, axis=1)
    return out.reset_index()


def listener_table(ls):
    import pandas as pd
    if ls.empty:
        return pd.DataFrame()
    keys = ["node", "netns_name", "listen"]
    g = ls.groupby(keys, dropna=False, sort=False)
    out = pd.concat({"backlog": g["backlog"].max(), "queue_peak": g["queue"].max(),
                     "established": g["established"].sum(), "overflows": g["overflows"].sum(),
                     "synack_retrans": g["synack_retrans"].sum(), "resets_out": g["resets_out"].sum()}, axis=1)
    return out.reset_index()


# -- the report -------------------------------------------------------------------------------------
class Report:
    """Everything `report` shows: ``tables`` ({name: DataFrame}), ``verdicts`` (replayed, every
    node), ``timeline``, ``nodes``, ``frames`` (per-interval frames for the plots), ``notes``."""

    def __init__(self, sources: list[Source], th: Thresholds | None = None, filters: Filters | None = None,
                 dns_share: float = 0.5, recorded: bool = False):
        import pandas as pd
        self.sources = sources
        self.th = th or Thresholds()
        self.filters = filters or Filters()
        self.notes = [n for s in sources for n in s.notes]
        self.snapshots = [s for s in sources if s.kind == "snapshot"]
        f = self.filters
        by_node: dict = {}              # node -> [source]
        self.contexts = {}
        for s in sources:
            if s.kind == "snapshot":
                continue
            if s.rec is not None:
                if s.count():
                    by_node.setdefault(s.node or "node", []).append(s)
                if s.node and s.meta.get("context"):
                    self.contexts[s.node] = s.meta["context"]
            else:
                for node in dict.fromkeys(r.get("node") or s.node or "node" for r in s.records):
                    by_node.setdefault(node, []).append(s)
        if f.node:
            if f.node not in by_node:
                raise BadInput(f"--node {f.node}: no such node in the input (nodes: {', '.join(sorted(by_node))})")
            by_node = {f.node: by_node[f.node]}
        self.verdicts, self.per_interval, frames = [], {}, {}
        self.replay_matches = {}
        self.intervals = {}
        for node, srcs in sorted(by_node.items()):
            srcs = sorted(srcs, key=lambda x: x.first_ts())

            def stream(node=node, srcs=srcs):
                last = None
                for src in srcs:
                    for r in src.iter_records(only=("verdicts",) if recorded else None):
                        if src.rec is None and (r.get("node") or src.node or "node") != node:
                            continue
                        if last is not None and r["ts"] <= last:      # an overlapping copy: counted once
                            continue
                        if f.since is not None and r["ts"] < f.since:
                            continue
                        if f.until is not None and r["ts"] > f.until:
                            continue
                        last = r["ts"]
                        yield r
            stats = {"n": 0, "match": True, "has_live": True}
            allv = recorded_verdicts(stream(), stats) if recorded else replay(stream(), self.th, dns_share, stats)
            if not stats["n"]:
                continue
            for v in allv:
                v["node"] = node
            self.verdicts.extend(allv)
            self.intervals[node] = stats["n"]
            if stats["has_live"] and not recorded:
                self.replay_matches[node] = stats["match"]
            parts: dict = {}
            for src in srcs:
                for k, df in src.frames(node, f.since, f.until).items():
                    parts.setdefault(k, []).append(df)
            for k, dfs in parts.items():
                df = pd.concat(dfs, ignore_index=True) if len(dfs) > 1 else dfs[0]
                if len(srcs) > 1:           # overlapping copies of one node's recording: each row once
                    df = df.drop_duplicates(subset=[c for c in df.columns if c != "interval"])
                frames.setdefault(k, []).append(df)
        if not self.intervals:
            if not any(s.count() for s in sources) and not self.snapshots:
                raise BadInput("no intervals in the input (an empty recording)")
            if not self.snapshots:
                raise BadInput("no intervals between --since and --until")
        self.frames = {k: pd.concat(v, ignore_index=True) for k, v in frames.items()}
        self._filter_rows()
        self.nodes = sorted(self.intervals)
        self.tables = self._tables()

    def _filter_rows(self) -> None:
        f = self.filters
        net = f.net()
        dst = self.frames.get("destinations")
        if dst is not None:
            keep = dst["dst"].map(lambda d: in_net(d, net)) if net is not None else True
            if f.domain:
                keep = keep & (dst["domain"] == f.domain)
            if f.pod:
                keep = keep & (dst["pod"] == f.pod)
            if keep is not True:
                self.frames["destinations"] = dst[keep].reset_index(drop=True)
        vs = []
        for v in self.verdicts:
            if net is not None and not in_net(v.get("dst") or v.get("listener"), net):
                continue
            if f.domain and v.get("domain") != f.domain:
                continue
            if f.pod and f.pod not in (v.get("pods") or []):
                continue
            vs.append(v)
        self.verdicts = vs

    def _tables(self) -> dict:
        import pandas as pd
        fr = self.frames
        dst = fr.get("destinations", pd.DataFrame())
        t = {}
        t["nodes"] = node_table(fr.get("intervals", pd.DataFrame()))
        t["destinations"] = destination_table(dst, ["node", "netns_name", "dst", "direction"])
        t["domains"] = rollup_table(dst, "domain") if "domain" in dst else pd.DataFrame()
        t["pods"] = rollup_table(dst, "pod") if "pod" in dst else pd.DataFrame()
        if len(self.nodes) > 1 and not t["domains"].empty:
            t["domains_all_nodes"] = rollup_table(dst, "domain", keys_extra=())
        t["listeners"] = listener_table(fr.get("listeners", pd.DataFrame()))
        t["nat"] = nat_table(fr.get("nat", pd.DataFrame()))
        t["conntrack"] = conntrack_table(fr.get("conntrack_netns", pd.DataFrame()))
        if len(self.nodes) > 1:
            n = t["nodes"]
            tot = {"node": "(all nodes)", "intervals": int(n["intervals"].sum()),
                   **{c: int(n[c].sum()) for c in COUNTERS + ["listen_overflows"]},
                   "peak_active": int(n["peak_active"].sum())}
            t["node_totals"] = pd.DataFrame([tot])
        t["timeline"] = self.timeline()
        return {k: v for k, v in t.items() if not v.empty}

    def timeline(self):
        import pandas as pd

        from netdiag.analysis.diagnose import NUMBER
        rows = [{"node": v["node"], "kind": v["kind"], "dst": v.get("dst") or v.get("listener"),
                 "number": NUMBER.get(v["kind"]), "value": v.get(NUMBER.get(v["kind"], ""), None),
                 "first_ts": v.get("first_ts"), "last_ts": v.get("last_ts"), "intervals": v.get("intervals"),
                 "domain": v.get("domain")} for v in self.verdicts]
        df = pd.DataFrame(rows)
        return df.sort_values("first_ts").reset_index(drop=True) if not df.empty else df

    def as_json(self) -> dict:
        return {"type": "report", "nodes": self.nodes, "thresholds": self.th.as_dict(),
                "inputs": [{"path": s.path, "kind": s.kind, "node": s.node, "intervals": s.count()}
                           for s in self.sources],
                "replay_matches_recording": self.replay_matches, "notes": self.notes,
                "verdicts": self.verdicts,
                "tables": {k: json.loads(df.to_json(orient="records")) for k, df in self.tables.items()},
                "contexts": self.contexts,
                "snapshots": [{**(s.meta.get("snapshot") or {}), "nat": (s.meta.get("context") or {}).get("nat"),
                               "tables": {k: t.to_pylist() for k, t in (s.tables or {}).items()}}
                              for s in self.snapshots]}
