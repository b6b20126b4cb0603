/* Events netdiag streams to userspace, and the limits of its maps.
 * netdiag/analysis/decode.py mirrors struct nd_event; tests/unit/test_decode.py checks the mirror
 * field by field against this header. Widest fields first, explicit padding. */
#ifndef ND_EVENTS_H
#define ND_EVENTS_H

#define ND_EV_CONNECT 1   /* a connect attempt's outcome: err 0 = established */
#define ND_EV_ACCEPT  2   /* a connection handed to a process by accept() */

/* indices of the per-CPU counter array nd_stats */
#define ND_STAT_CONNECT_ATTEMPT 0
#define ND_STAT_CONNECT_OK      1
#define ND_STAT_CONNECT_FAIL    2
#define ND_STAT_ACCEPT          3
#define ND_STAT_LOST            4
#define ND_STAT_ACCEPT_UNTRACKED 5
#define ND_STAT_DST_NEW         6   /* keys inserted into nd_dsts (evictions = inserted - present) */
#define ND_STAT_RST_OUT         7
#define ND_STAT_RST_IN          8
#define ND_STAT_MAX             9

#ifndef ND_MAX_CONNS
#define ND_MAX_CONNS 65536      /* in-flight connects / not-yet-accepted connections */
#endif
#ifndef ND_RINGBUF_PAGES
#define ND_RINGBUF_PAGES 256    /* 1 MiB of ring buffer (4 KiB pages) */
#endif

struct nd_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() at the outcome */
    u64 latency_ns;     /* connect: attempt -> outcome; accept: established -> accept() */
    u32 netns;          /* network namespace inode */
    u32 pid;            /* tgid of the process that connected / accepted */
    u32 tid;
    s32 err;            /* positive errno, 0 = success */
    u16 kind;           /* ND_EV_* */
    u16 family;         /* AF_INET / AF_INET6 */
    u16 sport;          /* local port, host order (accept: the listener's port) */
    u16 dport;          /* remote port, host order */
    u8 saddr[16];       /* local address (IPv4 in the first 4 bytes) */
    u8 daddr[16];       /* remote address */
    char comm[16];
};

#endif
