from netdiag.analysis import aggregate as agg

K = agg.DstKey(1, 4, "198.18.0.1", 8080)
K2 = agg.DstKey(1, 4, "198.18.0.1", 8081)


def vals(**kw):
    base = {c: 0 for c in agg.COUNTERS}
    base.update(kw)
    return base


def test_delta_is_cur_minus_prev_and_survives_eviction():
    assert agg.delta(vals(connects=10), vals(connects=4))["connects"] == 6
    assert agg.delta(vals(connects=3), vals(connects=9))["connects"] == 3      # re-inserted after eviction
    assert agg.delta(vals(connects=3), None)["connects"] == 3


def test_no_increment_lost_or_doubled_across_boundaries():
    readings = [vals(connects=n) for n in (0, 5, 5, 12, 40)]
    total = sum(agg.delta(c, p)["connects"] for p, c in zip(readings, readings[1:]))
    assert total == 40


def test_code_deltas():
    prev = {(K, 1, 111): 2}
    cur = {(K, 1, 111): 5, (K, 2, 3): 1}
    assert agg.code_deltas(cur, prev) == {(K, 1): {111: 3}, (K, 2): {3: 1}}


def test_code_counted_before_its_row_moves_is_kept_for_that_row():
    """A failure traced between the read of the counters and the read of the codes: the code
    is in this interval's dump, the failed count only in the next one."""
    prev_vals, prev_codes, errnos, failed = {K: vals()}, {}, {}, 0
    for cur_vals, codes in (({K: vals()}, {(K, 1, 111): 4}),               # codes ahead of counters
                            ({K: vals(failed=4)}, {(K, 1, 111): 4}),       # the counters catch up
                            ({K: vals(failed=7)}, {(K, 1, 111): 7})):
        shown = set()
        rows = agg.build_rows(cur_vals, prev_vals, {K: 1}, {K: 0}, agg.code_deltas(codes, prev_codes),
                              lambda c: f"E{c}", lambda c: f"R{c}", lambda ns: None, None, shown)
        for r in rows:
            failed += r["failed"]
            for k, v in r["failed_by_errno"].items():
                errnos[k] = errnos.get(k, 0) + v
        prev_vals, prev_codes = cur_vals, agg.codes_seen(codes, prev_codes, shown)
    assert failed == 7 and errnos == {"E111": 7}


def build(cur, prev, active, prev_active=None, codes=None):
    return agg.build_rows(cur, prev, {K: 1, K2: 2}, active, codes or {}, lambda c: f"E{c}",
                          lambda c: f"R{c}", lambda ns: None, prev_active)


def test_rows_skip_idle_keep_active_and_report_return_to_zero():
    cur = {K: vals(connects=5), K2: vals()}
    rows = build(cur, {K: vals(connects=5), K2: vals()}, {K: 0, K2: 0})
    assert rows == []
    rows = build(cur, {K: vals(connects=5)}, {K: 3})
    assert [r["dst"] for r in rows] == ["198.18.0.1:8080"] and rows[0]["active"] == 3
    rows = build(cur, {K: vals(connects=5)}, {K: 0}, prev_active={K: 3})
    assert rows[0]["active"] == 0


def test_rows_sorted_by_trouble_and_named_codes():
    cur = {K: vals(connects=5, established=5), K2: vals(failed=2, resets_out=2)}
    codes = {(K2, agg.CODE_CONNECT_ERRNO): {111: 2}, (K2, agg.CODE_RST_OUT_REASON): {2: 2}}
    rows = build(cur, {}, {K: 5, K2: 0}, codes=codes)
    assert rows[0]["dst"] == "198.18.0.1:8081" and rows[0]["direction"] == "in"
    assert rows[0]["failed_by_errno"] == {"E111": 2} and rows[0]["resets_out_by_reason"] == {"R2": 2}


def test_hist_delta():
    prev = [0] * 32
    cur = [0] * 32
    cur[0], cur[4] = 1, 7
    assert agg.hist_delta(cur, prev) == {"0us": 1, "16us": 7}


def test_overflows_go_to_the_full_listener():
    ls = [{"listen": "a", "backlog": 1, "max_queue": 2}, {"listen": "b", "backlog": 128, "max_queue": 0}]
    agg.attribute_overflows(ls, 9)
    assert [li["overflows"] for li in ls] == [9, 0]
    ls = [{"listen": "a", "backlog": 1, "max_queue": 0}]
    agg.attribute_overflows(ls, 0)
    assert ls[0]["overflows"] == 0
