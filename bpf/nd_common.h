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
#define ND_TUPLE_FROM_ARGS(t, a)                                        \
    do {                                                                \
        (t).family = (a)->family;                                       \
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

BPF_PERCPU_ARRAY(nd_stats, u64, ND_STAT_MAX);

/* A socket pointer as a map key, in a variable of its own. A typed (tp_btf, fentry) pointer
 * kept in a stack slot whose address a helper is given becomes a plain number there for the
 * 6.1 verifier, and the compiler would reload the pointer from that very slot for the next
 * field read; the empty asm hides from the compiler that the key equals the pointer. */
static __always_inline u64 nd_sk_key(u64 sk)
{
    asm volatile("" : "+r"(sk));
    return sk;
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

#ifdef ND_AGGREGATE
#ifndef ND_MAX_SOCKS
#define ND_MAX_SOCKS 262144     /* outbound sockets connecting, established or closing */
#endif
BPF_F_TABLE("lru_hash", u64, struct nd_conn, nd_conns, ND_MAX_SOCKS, BPF_F_NO_COMMON_LRU);
#else
BPF_F_TABLE("lru_hash", u64, struct nd_conn, nd_conns, ND_MAX_CONNS, BPF_F_NO_COMMON_LRU);
#endif
#endif

static __always_inline void nd_count(u32 idx)
{
#if defined(ND_AGGREGATE) && !defined(ND_STREAM)
    /* watch reads only these two (per-destination rows carry the rest); the other counters are
     * trace's run summary. idx is a constant at every call: the rest compile to nothing. */
    if (idx != ND_STAT_LOST && idx != ND_STAT_DST_NEW)
        return;
#endif
    u64 *v = nd_stats.lookup(&idx);
    if (v)
        (*v)++;
}

#ifdef ND_STREAM
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

/* network namespace inode of a struct sock *, through BTF offsets */
static __always_inline u32 nd_netns_of_sk(const void *sk)
{
    u32 inum = 0;
#ifdef ND_OFF_SOCK_NET
    void *net = NULL;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + ND_OFF_SOCK_NET);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + ND_OFF_NET_INUM);
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
        return net ? ND_LD(u32, net, ND_OFF_NET_INUM) : 0;
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
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + ND_OFF_NET_INUM);
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
