/* What the programs share with userspace: the events they stream, the counters' indexes, the
 * keys and values of the maps userspace reads, and the limits of its maps.
 * netdiag/analysis/decode.py mirrors struct nd_event and the aggregation structs,
 * netdiag/analysis/aggregate.py the directions and code kinds, netdiag/sources/conntrack/kprobe.py
 * the SNAT rows; tests/unit/test_header_contract.py checks every offset, size and value against
 * this header. Widest fields first, explicit padding. */
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
#define ND_STAT_PROC_NEW        9   /* keys inserted into nd_procs (evictions = inserted - present) */
#define ND_STAT_PROC_DST_NEW    10  /* keys inserted into nd_proc_dsts */
#define ND_STAT_MAX             11

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

/* ---- aggregation (bpf/agg.c) ---- */
#define ND_DIR_OUT 1
#define ND_DIR_IN  2

#define ND_CODE_CONNECT_ERRNO 1
#define ND_CODE_RST_OUT_REASON 2

struct nd_dst_key {
    u32 netns;
    u8 family;
    u8 dir;             /* ND_DIR_OUT (remote endpoint) or ND_DIR_IN (local endpoint): on loopback
                         * one ip:port is both, and the two rows must not merge */
    u16 port;           /* host order */
    u8 addr[16];
};

struct nd_dst_val {
    u64 connects;       /* outbound attempts */
    u64 established;    /* outbound: connects that succeeded; inbound: handshakes completed */
    u64 failed;
    u64 resets_in;
    u64 resets_out;
    u64 syn_retrans;    /* outbound SYNs; inbound SYN-ACKs */
    u64 retrans;        /* data retransmits */
    u64 accepts;        /* inbound: taken by accept() */
    u64 lat_sum_ns;     /* outbound connect latency */
    u64 lat_count;
    s64 active;         /* outbound: established now (seeded from inet_diag at start) */
    u32 dir;            /* ND_DIR_* bits */
    u32 pad;
};

struct nd_code_key {
    struct nd_dst_key d;
    u32 kind;           /* ND_CODE_* */
    u32 code;           /* errno, reset reason */
};

/* an outbound connection by 4-tuple (inet_diag seeding has no socket addresses) */
struct nd_sock_key {
    u32 netns;
    u16 family;
    u16 lport;
    u16 rport;
    u16 pad;
    u32 pad2;
    u8 laddr[16];
    u8 raddr[16];
};

struct nd_drop_key {
    u32 netns;
    u32 reason;
};

/* per process (watch --per-process, -DND_PER_PROCESS): a process is its tgid in the network
 * namespace of the sockets it uses (its pod) */
#ifndef ND_MAX_PROCS
#define ND_MAX_PROCS 4096
#endif

struct nd_proc_key {
    u32 tgid;
    u32 netns;
};

struct nd_proc_val {
    u64 connects;       /* outbound attempts it started */
    u64 established;    /* of those, connected */
    u64 failed;
    u64 resets_in;      /* RSTs received / sent on the connections it opened */
    u64 resets_out;
    u64 accepts;        /* connections it took with accept() (where the accept hook runs) */
    char comm[16];      /* filled by the first event in its own context on each CPU */
};

/* per process and destination (watch --per-domain, -DND_PROC_DSTS): which process opened the
 * connections of a destination row, so each share goes to the name that process resolved */
#ifndef ND_MAX_PROC_DSTS
#define ND_MAX_PROC_DSTS 16384
#endif

struct nd_proc_dst_key {
    u32 tgid;
    u32 netns;
    u8 family;
    u8 pad;
    u16 port;           /* remote port, host order */
    u32 pad2;
    u8 addr[16];        /* remote address */
};

struct nd_proc_dst_val {
    u64 connects;
    u64 established;
    u64 failed;
};

/* the state word of a slot of nd_dst_table / nd_code_table */
#define ND_DST_SLOT_FREE 0
#define ND_DST_SLOT_CLAIMING 1      /* a program nested on this CPU finds it so: it uses nd_dsts */
#define ND_DST_SLOT_HELD 2

struct nd_dst_slot {
    u64 state;
    struct nd_dst_key k;
    struct nd_dst_val v;
};
struct nd_code_slot {
    u64 state;
    struct nd_code_key k;
    u64 n;
};

/* ---- SNAT rows (bpf/snat.c) ---- */
#define ND_NAT_RANGE_PROTO_SPECIFIED (1 << 1)     /* NF_NAT_RANGE_PROTO_SPECIFIED, in range_flags */

struct nd_snat_key {
    u32 netns;          /* of the ct (the NAT's namespace) */
    u16 family;         /* AF_INET / AF_INET6 */
    u16 dport;          /* destination port, host order */
    u8 proto;
    u8 pad[7];
    u8 nat[16];         /* NAT source address (reply tuple dst); zero: a ct without source NAT */
    u8 dst[16];         /* destination (reply tuple src: the real peer after any DNAT) */
};

struct nd_snat_val {
    s64 in_use;         /* confirmed source-NATed entries alive now */
    u64 allocations;    /* confirmed */
    u64 releases;
    u64 insert_failed;  /* __nf_conntrack_confirm == NF_DROP */
    u64 setups;         /* nf_nat_setup_info picked a mapping (confirmed or not) */
    u32 range_flags;    /* of the last nf_nat_range2 seen for this row */
    u16 range_lo;       /* host order; valid when range_flags has NF_NAT_RANGE_PROTO_SPECIFIED */
    u16 range_hi;
};


#endif
