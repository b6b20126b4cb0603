/* Helpers shared by netdiag's probes. Nothing here includes a kernel-internal struct: pointer
 * walks use offsets read from the running kernel's BTF, passed in as -DND_OFF_* flags. */
#ifndef ND_COMMON_H
#define ND_COMMON_H

#include <uapi/asm-generic/errno.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include "nd_events.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* TCP states come from the running kernel's tracefs format file (-DND_TCP_*). */
#ifndef ND_TCP_ESTABLISHED
#error "ND_TCP_* state values must be passed as cflags"
#endif

#define ND_MODE_KPROBE 1
#define ND_MODE_FENTRY 2
#define ND_MODE_TRACEPOINT 3

/* an address tuple as the state tracepoint gives it */
struct nd_tuple {
    u16 family;
    u16 sport;
    u16 dport;
    u16 pad;            /* raw tracepoints: 0 = not read yet, 1 = filled, 2 = not a TCP socket */
    u8 saddr[16];
    u8 daddr[16];
};

/* Fill a struct nd_tuple from a tracepoint record with the usual family/sport/dport/saddr/daddr/
 * saddr_v6/daddr_v6 fields (inet_sock_set_state, tcp_receive_reset, tcp_retransmit_*, …). */
/* tcp:* tracepoints without `family` (before 5.13): IPv4 sockets store a v4-mapped saddr_v6
 * (ND_TCP_TP_NO_FAMILY, below); the others carry it */
#define ND_TP_FAMILY(a) ((a)->family)

/* Claim a free slot: *p from `old` to `new` in one step, true if this program did it. Kernels
 * before 5.12 have no BPF compare-and-exchange (netdiag compiles with ND_NO_CMPXCHG there): no
 * slot is ever claimed and every entry takes the LRU hash those tables fall back to. */
#ifdef ND_NO_CMPXCHG
#define ND_CLAIM(p, old, new) 0
#else
#define ND_CLAIM(p, old, new) (__sync_val_compare_and_swap((p), (old), (new)) == (old))
#endif

#ifdef ND_TCP_TP_NO_FAMILY
/* The 5.10 verifier refuses loads through a tracepoint record pointer moved off its start (what
 * a 16-byte memcpy out of it compiles to): the addresses are read as u32 words at constant
 * offsets, and the v4-mapped test picks the family. */
#define ND_TP_WORD(a, f, k) (((const u32 *)(a)->f)[k])
#define ND_TUPLE_FROM_ARGS(t, a)                                        \
    do {                                                                \
        u32 s_[4] = {ND_TP_WORD(a, saddr_v6, 0), ND_TP_WORD(a, saddr_v6, 1), \
                     ND_TP_WORD(a, saddr_v6, 2), ND_TP_WORD(a, saddr_v6, 3)}; \
        u32 d_[4] = {ND_TP_WORD(a, daddr_v6, 0), ND_TP_WORD(a, daddr_v6, 1), \
                     ND_TP_WORD(a, daddr_v6, 2), ND_TP_WORD(a, daddr_v6, 3)}; \
        (t).sport = (a)->sport;                                         \
        (t).dport = (a)->dport;                                         \
        (t).pad = 1;                                                    \
        if ((s_[0] | s_[1]) == 0 && s_[2] == bpf_htonl(0xffff)) {       \
            (t).family = AF_INET;                                       \
            __builtin_memcpy((t).saddr, &s_[3], 4);                     \
            __builtin_memcpy((t).daddr, &d_[3], 4);                     \
        } else {                                                        \
            (t).family = AF_INET6;                                      \
            __builtin_memcpy((t).saddr, s_, 16);                        \
            __builtin_memcpy((t).daddr, d_, 16);                        \
        }                                                               \
    } while (0)
#else
#define ND_TUPLE_FROM_ARGS(t, a)                                        \
    do {                                                                \
        (t).family = ND_TP_FAMILY(a);                                   \
        (t).sport = (a)->sport;                                         \
        (t).dport = (a)->dport;                                         \
        (t).pad = 1;                                                    \
        if ((t).family == AF_INET6) {                                   \
            __builtin_memcpy((t).saddr, (a)->saddr_v6, 16);             \
            __builtin_memcpy((t).daddr, (a)->daddr_v6, 16);             \
        } else {                                                        \
            __builtin_memcpy((t).saddr, (a)->saddr, 4);                 \
            __builtin_memcpy((t).daddr, (a)->daddr, 4);                 \
        }                                                               \
    } while (0)
#endif

BPF_PERCPU_ARRAY(nd_stats, u64, ND_STAT_MAX);

/* A socket's address as a plain number: a map key, or a table index (nd_conn_slot). Where the
 * programs get BTF-typed socket pointers (tp_btf, fentry), the verifier allows no arithmetic on
 * them, and the 6.1 one turns a stack slot holding one into a number once a helper reads it as
 * a key while the compiler may still reload the pointer from there for a field read. The value
 * goes through a per-CPU map slot instead, which hands it back as a number. */
#if defined(ND_BTF_TP) || ND_CONNECT_MODE == ND_MODE_FENTRY || ND_ACCEPT_MODE == ND_MODE_FENTRY
#define ND_TYPED_SK 1
BPF_PERCPU_ARRAY(nd_sk_nums, u64, 1);
#endif
static __always_inline u64 nd_sk_num(u64 sk)
{
#ifdef ND_TYPED_SK
    u32 zero = 0;
    volatile u64 *v = nd_sk_nums.lookup(&zero);
    if (!v)
        return 0;
    *v = sk;
    return *v;
#else
    return sk;
#endif
}

#ifdef ND_BTF_TP
/* BTF-typed tracepoints (tp_btf, -DND_BTF_TP): the state and RST-received programs get a struct
 * sock * the verifier knows the type of, so its fields are plain loads (one instruction each,
 * checked against the running kernel's BTF at load time) instead of bpf_probe_read_kernel()
 * calls. Each load has the size of the member it reads: the verifier refuses anything else. */
#define ND_TP_TYPED 1
#define ND_LD(T, p, off) (*(const T *)((const char *)(p) + (off)))

static __always_inline int nd_sk_is_tcp(const void *sk)
{
    return ND_LD(u16, sk, ND_OFF_SK_PROTOCOL) == IPPROTO_TCP;
}

static __always_inline void nd_tuple_of_sk(struct nd_tuple *t, const void *sk)
{
    u16 family = ND_LD(u16, sk, ND_OFF_SKC_FAMILY);
    u16 num = ND_LD(u16, sk, ND_OFF_SKC_NUM);
    u16 dport = ND_LD(u16, sk, ND_OFF_SKC_DPORT);
    if (family == AF_INET6) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 d = ND_LD(u32, sk, ND_OFF_SKC_V6_DADDR + 4 * i);
            u32 s = ND_LD(u32, sk, ND_OFF_SKC_V6_RCV_SADDR + 4 * i);
            __builtin_memcpy(t->daddr + 4 * i, &d, 4);
            __builtin_memcpy(t->saddr + 4 * i, &s, 4);
        }
    } else {
        u32 d = ND_LD(u32, sk, ND_OFF_SKC_DADDR);
        u32 s = ND_LD(u32, sk, ND_OFF_SKC_RCV_SADDR);
        __builtin_memcpy(t->daddr, &d, 4);
        __builtin_memcpy(t->saddr, &s, 4);
    }
    if (num == 0) {     /* CLOSE released the port (skc_num = 0) before the state change is traced */
        u16 sport = 0;  /* inet_sock's, past struct sock: the verifier allows no plain load there */
        bpf_probe_read_kernel(&sport, 2, (const char *)sk + ND_OFF_INET_SPORT);
        num = ntohs(sport);
    }
    t->family = family;
    t->sport = num;
    t->dport = ntohs(dport);
    t->pad = 1;
}
#elif defined(ND_RAW_TP)
#define ND_TP_TYPED 0
/* Raw tracepoints (-DND_RAW_TP) hand BPF the tracepoint's arguments (a struct sock *) instead of
 * a record the kernel filled beforehand: cheaper per event, and the fields a classic record
 * would carry are read here, only for the events that need them, at offsets from BTF. */
static __always_inline int nd_sk_is_tcp(const void *sk)
{
    u16 proto = 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), (const char *)sk + ND_OFF_SK_PROTOCOL);
    return proto == IPPROTO_TCP;
}

/* the tuple sock:inet_sock_set_state / tcp:tcp_receive_reset records carry (local = s*) */
static __always_inline void nd_tuple_of_sk(struct nd_tuple *t, const void *sk)
{
    const char *p = (const char *)sk;
    u16 family = 0, num = 0, dport = 0;
#if ND_OFF_SKC_RCV_SADDR == ND_OFF_SKC_DADDR + 4 && ND_OFF_SKC_DPORT >= ND_OFF_SKC_DADDR && \
    ND_OFF_SKC_NUM >= ND_OFF_SKC_DADDR && ND_OFF_SKC_FAMILY >= ND_OFF_SKC_DADDR && \
    ND_OFF_SKC_DPORT + 2 <= ND_OFF_SKC_DADDR + 24 && ND_OFF_SKC_NUM + 2 <= ND_OFF_SKC_DADDR + 24 && \
    ND_OFF_SKC_FAMILY + 2 <= ND_OFF_SKC_DADDR + 24
    /* the usual layout: addresses, ports and family within 24 bytes of sock_common, one read */
    u8 b[24] = {};
    bpf_probe_read_kernel(b, sizeof(b), p + ND_OFF_SKC_DADDR);
    __builtin_memcpy(&family, b + (ND_OFF_SKC_FAMILY - ND_OFF_SKC_DADDR), 2);
    __builtin_memcpy(&num, b + (ND_OFF_SKC_NUM - ND_OFF_SKC_DADDR), 2);
    __builtin_memcpy(&dport, b + (ND_OFF_SKC_DPORT - ND_OFF_SKC_DADDR), 2);
    if (family != AF_INET6) {
        __builtin_memcpy(t->daddr, b, 4);
        __builtin_memcpy(t->saddr, b + 4, 4);
    }
#else
    bpf_probe_read_kernel(&family, 2, p + ND_OFF_SKC_FAMILY);
    bpf_probe_read_kernel(&num, 2, p + ND_OFF_SKC_NUM);
    bpf_probe_read_kernel(&dport, 2, p + ND_OFF_SKC_DPORT);
    if (family != AF_INET6) {
        bpf_probe_read_kernel(t->daddr, 4, p + ND_OFF_SKC_DADDR);
        bpf_probe_read_kernel(t->saddr, 4, p + ND_OFF_SKC_RCV_SADDR);
    }
#endif
    if (family == AF_INET6) {
        bpf_probe_read_kernel(t->daddr, 16, p + ND_OFF_SKC_V6_DADDR);
        bpf_probe_read_kernel(t->saddr, 16, p + ND_OFF_SKC_V6_RCV_SADDR);
    }
    if (num == 0) {
        /* CLOSE released the port (skc_num = 0) before the state change is traced */
        u16 sport = 0;
        bpf_probe_read_kernel(&sport, 2, p + ND_OFF_INET_SPORT);
        num = ntohs(sport);
    }
    t->family = family;
    t->sport = num;
    t->dport = ntohs(dport);
    t->pad = 1;                  /* filled */
}
#else
#define ND_TP_TYPED 0
#endif

#ifdef ND_RAW_TP
/* Make sure t holds the socket's tuple (classic records come filled; raw tracepoints read it
 * on first use). 0 when sk is not a TCP socket. check_proto = 0 when the caller already knows. */
static __always_inline int nd_tuple_load(struct nd_tuple *t, u64 sk, int check_proto)
{
    if (t->pad)
        return t->pad == 1;
    if (check_proto && !nd_sk_is_tcp((const void *)sk)) {
        t->pad = 2;
        return 0;
    }
    nd_tuple_of_sk(t, (const void *)sk);
    return 1;
}
#else
static __always_inline int nd_tuple_load(struct nd_tuple *t, u64 sk, int check_proto)
{
    return 1;                    /* the tracepoint record filled it */
}
#endif

#if defined(ND_CONNECT_MODE) || defined(ND_AGGREGATE)
#define ND_CONN_CONNECTING 0    /* CLOSE -> SYN_SENT seen, outcome pending */
#define ND_CONN_ESTABLISHED 1   /* watch only: an outbound connection we counted in `active` */
#define ND_CONN_CLOSING 2       /* watch only: outbound, left ESTABLISHED, not yet CLOSE */

/* One entry per outbound socket, keyed by its struct sock address: a connect in flight (every
 * command) and, when aggregating, the same entry kept while the connection is established and
 * closing, so each transition costs one lookup and the socket one insert and one delete. */
struct nd_conn {
    u64 ts_ns;          /* attempt */
    u32 pid;
    u32 tid;
    u32 netns;
    u8 sync_done;       /* outcome already emitted */
    u8 state;           /* ND_CONN_* */
    u8 pad[2];
    struct nd_tuple t;
#ifdef ND_STREAM
    char comm[16];
#endif
};

/* The entries live in a direct-mapped table indexed by a multiplicative hash of the socket's
 * address: claiming a free slot is one compare-and-swap, finding it one array load, freeing it
 * one store, where a hash map pays a bucket lock, a free-list pop or push and a key hash each
 * time. Which socket holds a slot is kept apart from the entries (nd_conn_tags, 8 bytes a slot),
 * so the sockets that have no entry (inbound ones, asked on every state change and RST) touch a
 * table small enough to stay in cache. A socket whose slot another one holds goes to nd_conns,
 * an LRU hash, and nd_conn_spill[0] counts those (inserted - deleted; evictions leave it high,
 * never low): a socket that is not in the table costs a hash lookup only while some socket is
 * in the hash. The hash is sized by watch --max-socks (-DND_MAX_SOCKS), and its LRU lists are
 * common to all CPUs: an entry is inserted on the CPU that connects and deleted on whichever
 * CPU closes, and per-CPU lists (BPF_F_NO_COMMON_LRU) would give each CPU max / CPUs entries
 * of its own, so one busy CPU would evict held sockets' entries from a map far from full. */
#ifdef ND_AGGREGATE
#ifndef ND_CONN_SLOT_BITS
#define ND_CONN_SLOT_BITS 16    /* 65,536 slots (engine.SOCKET_SLOTS) */
#endif
#ifndef ND_MAX_SOCKS
#define ND_MAX_SOCKS 262144     /* outbound sockets whose slot was taken (engine.MAX_SOCKS) */
#endif
#else
#ifndef ND_CONN_SLOT_BITS
#define ND_CONN_SLOT_BITS 14    /* trace: connects in flight */
#endif
#define ND_MAX_SOCKS ND_MAX_CONNS
#endif
BPF_ARRAY(nd_conn_tags, u64, 1 << ND_CONN_SLOT_BITS);           /* the socket's address; 0: free */
BPF_ARRAY(nd_conn_slots, struct nd_conn, 1 << ND_CONN_SLOT_BITS);
BPF_F_TABLE("lru_hash", u64, struct nd_conn, nd_conns, ND_MAX_SOCKS, 0);
BPF_ARRAY(nd_conn_spill, u64, 1);

static __always_inline u32 nd_conn_slot_of(u64 num)
{
    return (u32)((num * 0x9E3779B97F4A7C15ULL) >> (64 - ND_CONN_SLOT_BITS));
}

static __always_inline u64 *nd_conn_spill_count(void)
{
    u32 zero = 0;
    return nd_conn_spill.lookup(&zero);
}

static __always_inline int nd_conn_spilled(void)
{
    u64 *n = nd_conn_spill_count();
    return n && *n;
}

/* forget the socket at num in the hash, if it is there */
static __always_inline void nd_conn_unspill(u64 num)
{
    if (nd_conn_spilled() && nd_conns.delete(&num) == 0) {
        u64 *n = nd_conn_spill_count();
        if (n)
            __sync_fetch_and_add(n, -1);
    }
}

/* the entry of the socket at num (nd_sk_num), 0 if it has none */
static __always_inline struct nd_conn *nd_conn_get(u64 num)
{
    u32 i = nd_conn_slot_of(num);
    u64 *tag = nd_conn_tags.lookup(&i);
    if (tag && *tag == num)
        return nd_conn_slots.lookup(&i);
    if (!nd_conn_spilled())
        return 0;
    return nd_conns.lookup(&num);
}

/* give the socket at num the entry c (replacing any it had) */
static __always_inline void nd_conn_put(u64 num, struct nd_conn *c)
{
    u32 i = nd_conn_slot_of(num);
    u64 *tag = nd_conn_tags.lookup(&i);
    if (!tag)
        return;
    u64 cur = *tag;
    if (cur == num || (cur == 0 && ND_CLAIM(tag, 0, num))) {
        struct nd_conn *e = nd_conn_slots.lookup(&i);
        if (e)
            *e = *c;
        nd_conn_unspill(num);          /* an older entry of the same address, if any */
        return;
    }
    if (nd_conns.insert(&num, c) == 0) {
        u64 *n = nd_conn_spill_count();
        if (n)
            __sync_fetch_and_add(n, 1);
    } else {
        nd_conns.update(&num, c);       /* it had one there already */
    }
}

/* the socket at num is done with its entry */
static __always_inline void nd_conn_del(u64 num)
{
    u32 i = nd_conn_slot_of(num);
    u64 *tag = nd_conn_tags.lookup(&i);
    if (tag && *tag == num) {
        *tag = 0;
        return;
    }
    nd_conn_unspill(num);
}
#endif

static __always_inline void nd_count(u32 idx)
{
#if defined(ND_AGGREGATE) && !defined(ND_STREAM)
    /* watch reads only these two (per-destination rows carry the rest); the other counters are
     * trace's run summary. idx is a constant at every call: the rest compile to nothing. */
    if (idx != ND_STAT_LOST && idx != ND_STAT_DST_NEW && idx != ND_STAT_PROC_NEW && idx != ND_STAT_PROC_DST_NEW)
        return;
#endif
    u64 *v = nd_stats.lookup(&idx);
    if (v)
        (*v)++;
}

#ifdef ND_STREAM
/* the fields every streamed event has, from a socket's tuple (kind-specific ones: the caller) */
static __always_inline void nd_event_fill(struct nd_event *ev, u32 kind, u64 ts_ns, u64 latency_ns,
                                          u32 netns, u32 pid, u32 tid, struct nd_tuple *t)
{
    ev->ts_ns = ts_ns;
    ev->latency_ns = latency_ns;
    ev->netns = netns;
    ev->pid = pid;
    ev->tid = tid;
    ev->kind = kind;
    ev->family = t->family;
    ev->sport = t->sport;
    ev->dport = t->dport;
    __builtin_memcpy(ev->saddr, t->saddr, 16);
    __builtin_memcpy(ev->daddr, t->daddr, 16);
}

#ifdef ND_RINGBUF
BPF_RINGBUF_OUTPUT(nd_events, ND_RINGBUF_PAGES);
static __always_inline void nd_emit(void *ctx, struct nd_event *ev)
{
    if (nd_events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
        nd_count(ND_STAT_LOST);
}
#else
BPF_PERF_OUTPUT(nd_events);
static __always_inline void nd_emit(void *ctx, struct nd_event *ev)
{
    if (nd_events.perf_submit(ctx, ev, sizeof(*ev)) != 0)
        nd_count(ND_STAT_LOST);
}
#endif
#endif /* ND_STREAM */

/* net->ns.inum shares its cache line with the namespace's reference count, which every socket
 * created or freed in that namespace changes (get_net/put_net): read on each event, it is a
 * cross-CPU miss at high connection rates. net->net_cookie sits on a line nothing writes after
 * the namespace is set up, and is never reused; a small direct-mapped table keyed by it gives
 * the inode with a read of shared, clean lines. One u64 per slot, (u32 cookie << 32 | inum), so
 * a lookup can never pair one namespace's cookie with another's inode. A kernel whose cookie is
 * still 0 (5.7 to 5.11 assign it lazily) or lacks the field reads the inode directly. */
#ifdef ND_OFF_NET_COOKIE
#define ND_NET_INUM_SLOTS 256
BPF_ARRAY(nd_net_inums, u64, ND_NET_INUM_SLOTS);

static __always_inline u32 nd_net_inum_cached(u64 cookie)
{
    u32 idx = cookie & (ND_NET_INUM_SLOTS - 1);
    u64 *e = nd_net_inums.lookup(&idx);
    if (e && (u32)(*e >> 32) == (u32)cookie)
        return (u32)*e;
    return 0;
}

static __always_inline void nd_net_inum_store(u64 cookie, u32 inum)
{
    u32 idx = cookie & (ND_NET_INUM_SLOTS - 1);
    u64 *e = nd_net_inums.lookup(&idx);
    if (e && inum)
        *e = ((u64)(u32)cookie << 32) | inum;
}
#endif

/* inode of the struct net * net, read with bpf_probe_read_kernel */
static __always_inline u32 nd_net_inum(const void *net)
{
    u32 inum = 0;
#ifdef ND_OFF_NET_COOKIE
    u64 cookie = 0;
    bpf_probe_read_kernel(&cookie, sizeof(cookie), (const char *)net + ND_OFF_NET_COOKIE);
    if (cookie) {
        inum = nd_net_inum_cached(cookie);
        if (inum)
            return inum;
    }
    bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + ND_OFF_NET_INUM);
    if (cookie)
        nd_net_inum_store(cookie, inum);
#else
    bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + ND_OFF_NET_INUM);
#endif
    return inum;
}

/* network namespace inode of a struct sock *, through BTF offsets */
static __always_inline u32 nd_netns_of_sk(const void *sk)
{
    u32 inum = 0;
#ifdef ND_OFF_SOCK_NET
    void *net = NULL;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + ND_OFF_SOCK_NET);
    if (net)
        inum = nd_net_inum(net);
#endif
    return inum;
}

/* The same, from a programme whose socket pointer is BTF-typed (typed = ND_TP_TYPED at call
 * sites on the state and RST-received tracepoints, and in fentry programs): plain loads. */
static __always_inline u32 nd_netns_sk(const void *sk, int typed)
{
#if defined(ND_BTF_TP) && defined(ND_OFF_SOCK_NET)
    if (typed) {
        const void *net = ND_LD(void *, sk, ND_OFF_SOCK_NET);
        if (!net)
            return 0;
#ifdef ND_OFF_NET_COOKIE
        u64 cookie = ND_LD(u64, net, ND_OFF_NET_COOKIE);
        if (cookie) {
            u32 inum = nd_net_inum_cached(cookie);
            if (!inum) {
                inum = ND_LD(u32, net, ND_OFF_NET_INUM);
                nd_net_inum_store(cookie, inum);
            }
            return inum;
        }
#endif
        return ND_LD(u32, net, ND_OFF_NET_INUM);
    }
#endif
    return nd_netns_of_sk(sk);
}

/* network namespace inode of the device a struct sk_buff * arrived on / leaves by */
static __always_inline u32 nd_netns_of_skb(const void *skb)
{
    u32 inum = 0;
#ifdef ND_OFF_SKB_DEV
    void *dev = NULL, *net = NULL;
    bpf_probe_read_kernel(&dev, sizeof(dev), (const char *)skb + ND_OFF_SKB_DEV);
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)dev + ND_OFF_DEV_NET);
    if (net)
        inum = nd_net_inum(net);
#endif
    return inum;
}

/* sk->sk_err: the errno a failed connect left on the socket */
static __always_inline int nd_sk_err(const void *sk)
{
    int err = 0;
#if defined(ND_BTF_TP) && defined(ND_OFF_SOCK_ERR)
    err = ND_LD(int, sk, ND_OFF_SOCK_ERR);        /* only the state tracepoint asks */
#elif defined(ND_OFF_SOCK_ERR)
    bpf_probe_read_kernel(&err, sizeof(err), (const char *)sk + ND_OFF_SOCK_ERR);
#endif
    return err;
}

/* The namespace an event needs before anything else: only with a --netns filter (0 otherwise,
 * and whoever needs it reads it later, if at all). */
static __always_inline u32 nd_netns_early(const void *sk, const void *skb, int typed)
{
#ifdef ND_FILTER_NETNS
    return sk ? nd_netns_sk(sk, typed) : nd_netns_of_skb(skb);
#else
    return 0;
#endif
}

static __always_inline int nd_netns_allowed(u32 netns)
{
#ifdef ND_FILTER_NETNS
    return netns == ND_FILTER_NETNS;
#else
    return 1;
#endif
}

static __always_inline int nd_pid_allowed(u32 pid)
{
#ifdef ND_FILTER_PID
    return pid == ND_FILTER_PID;
#else
    return 1;
#endif
}

#endif
