/* In-kernel aggregation for `netdiag watch`: counters per destination (outbound: remote ip:port),
 * per local service endpoint (inbound: local ip:port), per node. Userspace reads cumulative
 * counters every interval and subtracts: no increment is lost or counted twice at a boundary.
 * The maps are bounded LRU hashes (after a fixed per-CPU table for the first destinations, see
 * nd_dst); every key inserted in nd_dsts is counted (ND_STAT_DST_NEW), so
 * evictions = inserted - present.
 * The maps' keys and values, ND_DIR_*, ND_CODE_* and the slot states: nd_events.h (userspace reads them). */

#ifndef ND_MAX_DSTS
#define ND_MAX_DSTS 16384
#endif

/* per-CPU values: no atomic, no cache line bouncing between CPUs; userspace sums them */
BPF_F_TABLE("lru_percpu_hash", struct nd_dst_key, struct nd_dst_val, nd_dsts, ND_MAX_DSTS, BPF_F_NO_COMMON_LRU);
BPF_F_TABLE("lru_percpu_hash", struct nd_code_key, u64, nd_codes, ND_MAX_DSTS, BPF_F_NO_COMMON_LRU);
/* Outbound sockets have an nd_conn entry (nd_common.h) from connect() until they reach CLOSE. The RST
 * an abort sends (SO_LINGER 0, unread data) is traced right after ESTABLISHED -> CLOSE, on the
 * same CPU: this slot remembers the socket that just closed there and its destination. */
struct nd_closed_slot {
    u64 sk;
    struct nd_dst_key k;
    u32 pid;            /* the process that opened it (0: not known, a seeded connection) */
    u32 pad;
};
BPF_PERCPU_ARRAY(nd_last_closed, struct nd_closed_slot, 1);
/* outbound connections that existed before netdiag attached, written by userspace from
 * inet_diag (by 4-tuple: it has no socket addresses); consulted only once nd_seeded[0] is set.
 * Common LRU lists: userspace inserts them all from one CPU, which per-CPU lists would limit to
 * ND_MAX_SEEDED / CPUs entries. */
#ifndef ND_MAX_SEEDED
#define ND_MAX_SEEDED 262144
#endif
BPF_F_TABLE("lru_hash", struct nd_sock_key, u8, nd_out_seeded, ND_MAX_SEEDED, 0);
/* while userspace seeds (nd_seed_ctl[0] == 0), connections established by the probes are also
 * noted by 4-tuple, so the inet_diag dump does not count them a second time */
BPF_F_TABLE("lru_hash", struct nd_sock_key, u8, nd_seed_window, 65536, BPF_F_NO_COMMON_LRU);
BPF_ARRAY(nd_seed_ctl, u32, 2);    /* [0] seeding done, [1] nd_out_seeded has entries */
BPF_TABLE("lru_hash", struct nd_drop_key, u64, nd_drops, 4096);
BPF_PERCPU_ARRAY(nd_lat_hist, u64, 32);   /* node-wide connect latency, log2(microseconds) */

static __always_inline void nd_key_remote(struct nd_dst_key *k, u32 netns, struct nd_tuple *t)
{
    k->netns = netns;
    k->family = t->family;
    k->dir = ND_DIR_OUT;
    k->port = t->dport;
    __builtin_memcpy(k->addr, t->daddr, 16);
}

static __always_inline void nd_key_local(struct nd_dst_key *k, u32 netns, struct nd_tuple *t)
{
    k->netns = netns;
    k->family = t->family;
    k->dir = ND_DIR_IN;
    k->port = t->sport;
    __builtin_memcpy(k->addr, t->saddr, 16);
}

static __always_inline void nd_sock_key_of(struct nd_sock_key *s, u32 netns, struct nd_tuple *t)
{
    s->netns = netns;
    s->family = t->family;
    s->lport = t->sport;
    s->rport = t->dport;
    __builtin_memcpy(s->laddr, t->saddr, 16);
    __builtin_memcpy(s->raddr, t->daddr, 16);
}

/* The first destinations each CPU counts have their rows in a direct-mapped per-CPU table
 * (ND_DST_SLOT_BITS, watch --dst-slots), indexed by a multiplicative hash of the key: finding a
 * row there is one array load and three compares, where nd_dsts pays a key hash, a bucket walk
 * and a memcmp each time. A slot, once a CPU's copy holds a key, keeps it for the run (no
 * eviction, so counts never move between maps while userspace reads them); a key whose slot
 * holds another one counts in nd_dsts on that CPU. Userspace adds both up per key. */
#ifndef ND_DST_SLOT_BITS
#define ND_DST_SLOT_BITS 10
#endif
BPF_PERCPU_ARRAY(nd_dst_table, struct nd_dst_slot, 1 << ND_DST_SLOT_BITS);

/* The same for the errno / reset-reason breakdown (nd_codes): struct nd_code_slot. */
BPF_PERCPU_ARRAY(nd_code_table, struct nd_code_slot, 1 << ND_DST_SLOT_BITS);

/* Per process (-DND_PER_PROCESS, watch --per-process): connects, outcomes and the resets of
 * the connections a process opened, and the connections it accepted, per (tgid, netns), in a
 * bounded per-CPU LRU hash; each key inserted is counted (ND_STAT_PROC_NEW), so
 * evictions = inserted - present. The outcome and the resets of a connection are traced in
 * softirq context: they find the process through the socket's nd_conn entry (its pid). The
 * name is read in the process's own context only (its connects and accepts). */
#ifdef ND_PER_PROCESS
BPF_F_TABLE("lru_percpu_hash", struct nd_proc_key, struct nd_proc_val, nd_procs, ND_MAX_PROCS, BPF_F_NO_COMMON_LRU);

/* this CPU's row of process tgid in netns; in_task: the calling task is that process */
static __always_inline struct nd_proc_val *nd_proc(u32 tgid, u32 netns, int in_task)
{
    struct nd_proc_key pk = {};
    pk.tgid = tgid;
    pk.netns = netns;
    struct nd_proc_val *v = nd_procs.lookup(&pk);
    if (!v && tgid) {
        struct nd_proc_val zero = {};
        if (in_task)
            bpf_get_current_comm(zero.comm, sizeof(zero.comm));
        if (nd_procs.insert(&pk, &zero) == 0)
            nd_count(ND_STAT_PROC_NEW);
        v = nd_procs.lookup(&pk);
    } else if (v && in_task && !v->comm[0]) {
        bpf_get_current_comm(v->comm, sizeof(v->comm));
    }
    return tgid ? v : 0;
}
#endif

/* Per process and destination (-DND_PROC_DSTS, watch --per-domain): the connects of each
 * destination row by the process that started them, and their outcomes, so that userspace can
 * give each process's share to the name that process resolved for the address. Bounded like
 * nd_procs; each key inserted counted (ND_STAT_PROC_DST_NEW). */
#ifdef ND_PROC_DSTS
BPF_F_TABLE("lru_percpu_hash", struct nd_proc_dst_key, struct nd_proc_dst_val, nd_proc_dsts, ND_MAX_PROC_DSTS,
            BPF_F_NO_COMMON_LRU);

static __always_inline struct nd_proc_dst_val *nd_proc_dst(u32 tgid, u32 netns, struct nd_tuple *t)
{
    struct nd_proc_dst_key pk = {};
    pk.tgid = tgid;
    pk.netns = netns;
    pk.family = t->family;
    pk.port = t->dport;
    __builtin_memcpy(pk.addr, t->daddr, 16);
    struct nd_proc_dst_val *v = nd_proc_dsts.lookup(&pk);
    if (!v && tgid) {
        struct nd_proc_dst_val zero = {};
        if (nd_proc_dsts.insert(&pk, &zero) == 0)
            nd_count(ND_STAT_PROC_DST_NEW);
        v = nd_proc_dsts.lookup(&pk);
    }
    return tgid ? v : 0;
}
#endif

/* a slot index from a key's 8-byte words */
static __always_inline u32 nd_slot_index(u64 a, u64 b, u64 c)
{
#if ND_DST_SLOT_BITS > 0
    return (u32)((((a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ c) * 0x9E3779B97F4A7C15ULL) >>
                 (64 - ND_DST_SLOT_BITS));
#else
    return 0;
#endif
}

#define ND_SLOT_MATCH 1             /* the slot holds the key */
#define ND_SLOT_CLAIMED 2           /* it was free and is now the caller's to fill (then HELD) */

/* A slot of this CPU's table (its state word, and the n 8-byte words of the key it holds)
 * for the key w: ND_SLOT_MATCH, ND_SLOT_CLAIMED (FREE -> CLAIMING), or 0 when it holds another
 * key or a program nested on this CPU is claiming it. */
static __always_inline int nd_slot_take(u64 *state, const u64 *held, const u64 *w, int n)
{
    if (*state == ND_DST_SLOT_HELD) {
#pragma unroll
        for (int j = 0; j < n; j++)
            if (held[j] != w[j])
                return 0;
        return ND_SLOT_MATCH;
    }
    if (*state == ND_DST_SLOT_FREE && ND_CLAIM(state, ND_DST_SLOT_FREE, ND_DST_SLOT_CLAIMING))
        return ND_SLOT_CLAIMED;
    return 0;
}

static __always_inline struct nd_dst_val *nd_dst(struct nd_dst_key *k, u32 dir)
{
    u64 w[3];
    __builtin_memcpy(w, k, sizeof(w));
    u32 i = nd_slot_index(w[0], w[1], w[2]);
    struct nd_dst_slot *s = nd_dst_table.lookup(&i);
    int got = s ? nd_slot_take(&s->state, (u64 *)&s->k, w, 3) : 0;
    if (got) {
        if (got == ND_SLOT_CLAIMED) {   /* a free slot's counters are all 0 */
            s->k = *k;
            s->state = ND_DST_SLOT_HELD;
        }
        s->v.dir |= dir;
        return &s->v;
    }
    struct nd_dst_val *v = nd_dsts.lookup(k);
    if (!v) {
        struct nd_dst_val zero = {};
        zero.dir = dir;
        if (nd_dsts.insert(k, &zero) == 0)
            nd_count(ND_STAT_DST_NEW);
        v = nd_dsts.lookup(k);
        if (!v)
            return 0;
    }
    v->dir |= dir;                  /* this CPU's copy; userspace ORs them */
    return v;
}

static __always_inline void nd_code_add(struct nd_dst_key *k, u32 kind, u32 code)
{
    struct nd_code_key ck = {};
    ck.d = *k;
    ck.kind = kind;
    ck.code = code;
    u64 w[4];
    __builtin_memcpy(w, &ck, sizeof(w));
    u32 i = nd_slot_index(w[0], w[1], w[2] ^ (w[3] * 0xFF51AFD7ED558CCDULL));
    struct nd_code_slot *s = nd_code_table.lookup(&i);
    int got = s ? nd_slot_take(&s->state, (u64 *)&s->k, w, 4) : 0;
    if (got) {
        if (got == ND_SLOT_CLAIMED) {
            s->k = ck;
            s->state = ND_DST_SLOT_HELD;
        }
        s->n += 1;                      /* a claimed slot's count starts at 0 */
        return;
    }
    u64 one = 1;
    u64 *v = nd_codes.lookup(&ck);     /* this CPU's copy: userspace sums them */
    if (v)
        *v += 1;
    else
        nd_codes.update(&ck, &one);
}

/* floor(log2(v)) (0 for 0), at most 31: five halving steps instead of a loop of 31 */
static __always_inline u32 nd_log2(u64 v)
{
    u32 r = 0;
    if (v >> 32)
        return 31;
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1)
        r += 1;
    return r;
}

/* an outbound connect attempt started (on socket sk: if it sits in this CPU's closed slot, that
 * was an earlier socket at the same address) */
static __always_inline void nd_agg_connect(u64 sk, u32 netns, struct nd_tuple *t, u32 pid)
{
#ifdef ND_PER_PROCESS
    struct nd_proc_val *pv = nd_proc(pid, netns, 1);      /* connect() runs in the caller */
    if (pv)
        pv->connects += 1;
#endif
#ifdef ND_PROC_DSTS
    struct nd_proc_dst_val *dv = nd_proc_dst(pid, netns, t);
    if (dv)
        dv->connects += 1;
#endif
    u32 zero = 0;
    struct nd_closed_slot *slot = nd_last_closed.lookup(&zero);
    if (slot && slot->sk == sk)
        slot->sk = 0;
    struct nd_dst_key k = {};
    nd_key_remote(&k, netns, t);
    struct nd_dst_val *v = nd_dst(&k, ND_DIR_OUT);
    if (v)
        v->connects += 1;
}

static __always_inline int nd_seed_flag(u32 idx)
{
    u32 *f = nd_seed_ctl.lookup(&idx);
    return f && *f;
}

static __always_inline int nd_any_seeded(void)
{
    return nd_seed_flag(1);
}

/* its outcome: err 0 = established (t is the full tuple then; the caller keeps the socket's
 * nd_conn entry, now ND_CONN_ESTABLISHED) */
static __always_inline void nd_agg_outcome(u64 sk, u32 netns, struct nd_tuple *t, int err, u64 lat_ns, u32 pid)
{
#ifdef ND_PER_PROCESS
    struct nd_proc_val *pv = nd_proc(pid, netns, 0);
    if (pv) {
        if (err)
            pv->failed += 1;
        else
            pv->established += 1;
    }
#endif
#ifdef ND_PROC_DSTS
    struct nd_proc_dst_val *dv = nd_proc_dst(pid, netns, t);
    if (dv) {
        if (err)
            dv->failed += 1;
        else
            dv->established += 1;
    }
#endif
    struct nd_dst_key k = {};
    nd_key_remote(&k, netns, t);
    struct nd_dst_val *v = nd_dst(&k, ND_DIR_OUT);
    if (!v)
        return;
    if (err) {
        v->failed += 1;
        nd_code_add(&k, ND_CODE_CONNECT_ERRNO, err);
        return;
    }
    v->established += 1;
    v->active += 1;
    v->lat_sum_ns += lat_ns;
    v->lat_count += 1;
    u8 one = 1;
    u32 slot = nd_log2(lat_ns / 1000);
    u64 *h = nd_lat_hist.lookup(&slot);
    if (h)
        (*h)++;
    if (!nd_seed_flag(0)) {
        struct nd_sock_key s = {};
        nd_sock_key_of(&s, netns, t);
        nd_seed_window.update(&s, &one);
    }
}

static __always_inline void nd_note_closed(u64 sk, struct nd_dst_key *k, u32 pid)
{
    u32 zero = 0;
    struct nd_closed_slot *slot = nd_last_closed.lookup(&zero);
    if (slot) {
        slot->sk = sk;
        slot->k = *k;
        slot->pid = pid;
    }
}

/* a socket left ESTABLISHED for newstate: if it was one of ours outbound, `active` drops */
static __always_inline void nd_agg_left_established(u64 sk, struct nd_tuple *t, int newstate)
{
    u64 num = nd_sk_num(sk);
    struct nd_dst_key k = {};
    u32 pid = 0;
    struct nd_conn *c = nd_conn_get(num);
    if (c) {
        if (c->state != ND_CONN_ESTABLISHED)
            return;
        pid = c->pid;
        nd_key_remote(&k, c->netns, &c->t);
        if (newstate == ND_TCP_CLOSE)
            nd_conn_del(num);
        else
            c->state = ND_CONN_CLOSING;     /* its RSTs still count against the destination */
    } else {
        if (!nd_any_seeded() || !nd_tuple_load(t, sk, 1))
            return;
        u32 netns = nd_netns_sk((void *)sk, ND_TP_TYPED);
        struct nd_sock_key s = {};
        nd_sock_key_of(&s, netns, t);
        if (!nd_out_seeded.lookup(&s))
            return;
        nd_out_seeded.delete(&s);
        nd_key_remote(&k, netns, t);
        if (newstate != ND_TCP_CLOSE) {
            struct nd_conn closing = {};
            closing.netns = netns;
            closing.state = ND_CONN_CLOSING;
            closing.t = *t;
            nd_conn_put(num, &closing);
        }
    }
    if (newstate == ND_TCP_CLOSE)
        nd_note_closed(sk, &k, pid);
    /* a seeded destination may have no row in the kernel yet: create it (active goes to -1
     * there, userspace adds the seeded count) */
    struct nd_dst_val *v = nd_dst(&k, ND_DIR_OUT);
    if (v)
        v->active += -1;
}

/* an outbound socket that had left ESTABLISHED reached CLOSE (FIN_WAIT*, CLOSE_WAIT, LAST_ACK,
 * CLOSING -> CLOSE; TIME_WAIT is a separate socket): forget it */
static __always_inline void nd_agg_closed(u64 sk, struct nd_tuple *t)
{
    u64 num = nd_sk_num(sk);
    struct nd_conn *c = nd_conn_get(num);
    if (!c || c->state != ND_CONN_CLOSING)
        return;
    struct nd_dst_key k = {};
    nd_key_remote(&k, c->netns, &c->t);
    nd_note_closed(sk, &k, c->pid); /* CLOSE_WAIT -> CLOSE by an abort sends an RST next */
    nd_conn_del(num);
}

/* Which row does an event on this socket belong to? Outbound sockets (with an nd_conn entry: connecting,
 * or the one that just closed on this CPU) count against the remote endpoint, the rest against
 * the local one. netns: the event's namespace if the caller has read it (a --netns filter), else
 * 0, and it is read here only when the row needs it (from sk, or from the device of skb for a
 * socket-less segment): the RST an abort sends right after CLOSE takes its row from the slot.
 * typed: sk is BTF-typed (ND_TP_TYPED from the RST-received program), 0 from classic ones. */
/* the socket's remote port, host order (from t where the record filled it) */
static __always_inline u16 nd_remote_port(u64 sk, struct nd_tuple *t)
{
#ifdef ND_RAW_TP
    if (t->pad != 1) {
        u16 port = 0;
        bpf_probe_read_kernel(&port, sizeof(port), (const char *)sk + ND_OFF_SKC_DPORT);
        return ntohs(port);
    }
#endif
    return t->dport;
}

static __always_inline u32 nd_classify(u64 sk, const void *skb, u32 netns, struct nd_tuple *t,
                                       int connecting, struct nd_dst_key *k, int typed, u32 *pid)
{
    if (sk) {
        /* the slot first (an array: no hash), and used once: a later event with the same
         * address is a new socket's (connect clears the slot for its socket too). An inbound
         * socket can take the address of one whose slot nothing used (a FIN close), on any
         * CPU, so the remote port must match as well: the abort's RST is sent before CLOSE
         * clears it, and an inbound socket's remote port is its client's. */
        u32 zero = 0;
        struct nd_closed_slot *slot = nd_last_closed.lookup(&zero);
        if (slot && slot->sk == sk && slot->k.port == nd_remote_port(sk, t)) {
            *k = slot->k;
            *pid = slot->pid;
            slot->sk = 0;
            return ND_DIR_OUT;
        }
        struct nd_conn *c = nd_conn_get(nd_sk_num(sk));
        if (c) {
            nd_key_remote(k, c->netns, &c->t);     /* the remote end it connected to */
            *pid = c->pid;
            return ND_DIR_OUT;
        }
        if (typed)
            nd_tuple_load(t, sk, 0);               /* a typed caller may leave t to be read here */
    }
    if (!netns)
        netns = sk ? nd_netns_sk((void *)sk, typed) : nd_netns_of_skb(skb);
    int out = connecting;
    if (!out && sk && nd_any_seeded()) {
        struct nd_sock_key s = {};
        nd_sock_key_of(&s, netns, t);
        out = nd_out_seeded.lookup(&s) != 0;
    }
    if (out) {
        nd_key_remote(k, netns, t);
        return ND_DIR_OUT;
    }
    nd_key_local(k, netns, t);
    return ND_DIR_IN;
}

/* a child socket completed its handshake on a local listener */
static __always_inline void nd_agg_inbound_established(u64 sk, struct nd_tuple *t)
{
    struct nd_dst_key k = {};
    nd_key_local(&k, nd_netns_sk((void *)sk, ND_TP_TYPED), t);
    struct nd_dst_val *v = nd_dst(&k, ND_DIR_IN);
    if (v)
        v->established += 1;
}

/* the connection t was accepted by process pid (comm: its name when the caller is not that
 * process, 0 when it is) */
static __always_inline void nd_agg_accepted(u32 netns, struct nd_tuple *t, u32 pid, const char *comm)
{
#ifdef ND_PER_PROCESS
    struct nd_proc_val *pv = nd_proc(pid, netns, comm == 0);
    if (pv) {
        pv->accepts += 1;
        if (comm && !pv->comm[0])
            __builtin_memcpy(pv->comm, comm, 16);
    }
#endif
    struct nd_dst_key k = {};
    nd_key_local(&k, netns, t);
    struct nd_dst_val *v = nd_dst(&k, ND_DIR_IN);
    if (v)
        v->accepts += 1;
}
