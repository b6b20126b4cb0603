/* DNS capture for `watch --per-domain` on the cgroup socket-buffer hooks (cgroup_skb), attached
 * through bpf_links to the root of the cgroup v2 hierarchy: it runs for the packets of local
 * sockets only, in every network namespace, and clones nothing. A packet a local socket sends to
 * port 53 (a query, or its TCP handshake) or receives from port 53 (an answer) is copied, from
 * its IP header on, up to ND_DNS_SNAP bytes (the record has the packet's length: userspace
 * takes min(len, the record's room)), into its CPU's ring buffer with the socket's namespace
 * cookie; userspace (netdiag/sources/dns/cgcapture.py) decodes it as it decodes a packet socket's.
 * Every program returns 1: the packet always goes on. Needs bpf_get_netns_cookie() in
 * cgroup_skb programs; without it netdiag falls back to packet sockets.
 * Built with -DND_DNS_SOCK, the file holds the socket path instead (at its end): tracepoints on
 * the socket calls, sharing the rings and the record header. */

#ifndef ND_DNS_RB_PAGES
#define ND_DNS_RB_PAGES 1024
#endif
#ifndef ND_DNS_MAX_CPUS
#define ND_DNS_MAX_CPUS 1024
#endif

#include "nd_dns.h"

/* One ring buffer per CPU (netdiag fills nd_dns_rings[cpu]; nd_dns_ring0 is the template and
 * CPU 0's): producers on different CPUs never wait on one ring's lock. Userspace merges the
 * rings in time order. */
BPF_RINGBUF_OUTPUT(nd_dns_ring0, ND_DNS_RB_PAGES);
BPF_ARRAY_OF_MAPS(nd_dns_rings, "nd_dns_ring0", ND_DNS_MAX_CPUS);
BPF_PERCPU_ARRAY(nd_dns_lost, u64, 1);

static __always_inline void nd_dns_lost_one(void)
{
    u32 zero = 0;
    u64 *lost = nd_dns_lost.lookup(&zero);
    if (lost)
        (*lost)++;
}

/* Fill a record reserved in the ring (never staged in a per-CPU buffer: an ingress program run
 * from a softirq can interrupt an egress one on the same CPU) with the header and the packet's
 * first n bytes, and commit it. */
static __always_inline void nd_dns_fill(struct nd_dns_hdr *h, struct __sk_buff *skb, u8 dir, u32 len, u32 n)
{
    h->ts_ns = bpf_ktime_get_ns();
    h->netns_cookie = bpf_get_netns_cookie(skb);
    h->len = len;
    h->dir = dir;
    if (n < 20 || bpf_skb_load_bytes(skb, 0, (u8 *)(h + 1), n) < 0) {
        bpf_ringbuf_discard(h, 0);
        return;
    }
    bpf_ringbuf_submit(h, 0);
}

#ifndef ND_DNS_SOCK
static __always_inline int nd_dns_packet(struct __sk_buff *skb, u8 dir)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    u8 *p = data;
    u32 off;
    u8 proto;
    if (skb->protocol == bpf_htons(0x0800)) {
        if (p + 20 > (u8 *)end)
            return 1;
        if ((p[6] & 0x1f) || p[7])
            return 1;                     /* a later fragment: no ports */
        proto = p[9];
        off = (p[0] & 0x0f) * 4;
    } else if (skb->protocol == bpf_htons(0x86DD)) {
        if (p + 40 > (u8 *)end)
            return 1;
        proto = p[6];                     /* extension headers: not DNS as far as this goes */
        off = 40;
    } else {
        return 1;
    }
    if (proto != 17 && proto != 6)     /* UDP, TCP */
        return 1;
    if (off < 20 || off > 60)
        return 1;
    u8 *l4 = p + off;
    if (l4 + 4 > (u8 *)end)
        return 1;
    /* egress: destination port 53 (the client's query); ingress: source port 53 (its answer) */
    u8 *port = dir == ND_DNS_EGRESS ? l4 + 2 : l4;
    if (port[0] != 0 || port[1] != 53)
        return 1;
    u32 len = skb->len;
    u32 cpu = bpf_get_smp_processor_id();
    void *ring = nd_dns_rings.lookup(&cpu);
    if (!ring)
        goto lost;
    if (len <= ND_DNS_SMALL) {
        struct nd_dns_hdr *h = bpf_ringbuf_reserve(ring, sizeof(struct nd_dns_small), 0);
        if (!h)
            goto lost;
        nd_dns_fill(h, skb, dir, len, len);
    } else {
        struct nd_dns_hdr *h = bpf_ringbuf_reserve(ring, sizeof(struct nd_dns_rec), 0);
        if (!h)
            goto lost;
        nd_dns_fill(h, skb, dir, len, len > ND_DNS_SNAP ? ND_DNS_SNAP : len);
    }
    return 1;
lost:
    nd_dns_lost_one();
    return 1;
}

int nd_dns_egress(struct __sk_buff *skb)
{
    return nd_dns_packet(skb, ND_DNS_EGRESS);
}

int nd_dns_ingress(struct __sk_buff *skb)
{
    return nd_dns_packet(skb, ND_DNS_INGRESS);
}
#endif /* !ND_DNS_SOCK */

#ifdef ND_DNS_SOCK
/* The socket path (-DND_DNS_SOCK, netdiag/sources/dns/sockcapture.py): BTF-typed tracepoints on
 * sock:sock_send_length and sock:sock_recv_length, which fire once per sendmsg/recvmsg a socket
 * completes (not per packet: a handshake, an ACK or an RST runs nothing). A client's DNS
 * message is taken from the calling thread's own buffers, named by the syscall's arguments in
 * its saved user registers (bpf_task_pt_regs): sendto/recvfrom, sendmsg/recvmsg,
 * sendmmsg/recvmmsg, write/read, writev/readv. What decides that a message is DNS:
 *   - a connected socket (TCP, or UDP after connect()) whose peer port is 53;
 *   - an unconnected UDP socket sending to port 53 (the destination in msg_name). Such a socket
 *     is noted in nd_dns_socks with that destination; what it then reads is an answer from it
 *     (recvfrom's source address reaches the user only after the tracepoint), flagged
 *     ND_DNS_PEER_GUESSED so userspace keeps it only when it answers a query it saw.
 * The record: nd_dns_hdr (dir ND_DNS_SEND / ND_DNS_RECV, len = the payload bytes copied), the
 * socket's addresses (struct nd_dns_sk), then the payload as the application wrote or read it
 * (for TCP: part of the byte stream, length prefixes included; userspace reassembles it).
 * Offsets come from BTF (-DND_OFF_*), syscall numbers and the user registers' layout from
 * netdiag/kernel/dnsprog.py for this architecture. */

#define ND_MSG_PEEK 2

struct nd_dns_sk_small {
    struct nd_dns_hdr h;
    struct nd_dns_sk s;
    u8 data[ND_DNS_SMALL];
};
/* room for one buffer of up to 2 * ND_DNS_SNAP - 1 bytes, or pieces of up to ND_DNS_SNAP - 1
 * bytes from each of up to ND_DNS_IOVS buffers, each starting below ND_DNS_SNAP: bounds the
 * verifier can check */
#define ND_DNS_IOVS 4
struct nd_dns_sk_rec {
    struct nd_dns_hdr h;
    struct nd_dns_sk s;
    u8 data[2 * ND_DNS_SNAP];
};

/* unconnected UDP sockets that sent a query: sk -> where it went */
struct nd_dns_peer {
    u8 family;
    u8 pad[5];
    u16 port;           /* host order */
    u8 addr[16];
};
BPF_TABLE("lru_hash", u64, struct nd_dns_peer, nd_dns_socks, 16384);

/* sendmmsg/recvmmsg: the tracepoint fires once per message and does not say which; the kernel
 * writes each message's msg_len right after it, which tells a next message of the same call
 * from a new call (thread id -> vector, next index, what the kernel wrote for the previous) */
struct nd_dns_mmsg {
    u64 vec;
    u32 next;
    u32 prev_len;
};
BPF_TABLE("lru_hash", u64, struct nd_dns_mmsg, nd_dns_mmsg, 4096);

static __always_inline u64 nd_dns_ureg(const void *regs, u32 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)regs + off);
    return v;
}

static __always_inline u64 nd_dns_uload(u64 addr)
{
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (const void *)addr);
    return v;
}

#define ND_MSGHDR_NAME 0
#define ND_MSGHDR_IOV 16
#define ND_MSGHDR_IOVLEN 24
#define ND_MMSGHDR_SIZE 64
#define ND_MMSGHDR_LEN 56

static __always_inline u32 nd_dns_mmsg_index(u64 vec, u64 vlen, int ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 idx = 0;
    struct nd_dns_mmsg *m = nd_dns_mmsg.lookup(&id);
    if (m && m->vec == vec && m->next > 0 && m->next < vlen && m->next < 1024) {
        u32 was = 0;
        bpf_probe_read_user(&was, sizeof(was), (const void *)(vec + (u64)(m->next - 1) * ND_MMSGHDR_SIZE + ND_MMSGHDR_LEN));
        if (was == m->prev_len)
            idx = m->next;
    }
    struct nd_dns_mmsg n = {.vec = vec, .next = idx + 1, .prev_len = (u32)ret};
    nd_dns_mmsg.update(&id, &n);
    return idx;
}

/* The user buffers of the syscall this thread is in: either one (buf, len) or an iovec array. */
struct nd_dns_uio {
    u64 buf;
    u64 len;
    u64 iov;
    u64 iovlen;
    u64 name;           /* struct sockaddr * of sendto / msg_name, 0 if none */
};

static __always_inline int nd_dns_uio_of(struct nd_dns_uio *u, int ret)
{
    struct task_struct *task = bpf_get_current_task_btf();
    const void *regs = (const void *)bpf_task_pt_regs(task);
    if (!regs)
        return 0;
    u64 nr = nd_dns_ureg(regs, ND_OFF_REGS_NR);
    u64 a1 = nd_dns_ureg(regs, ND_OFF_REGS_A1), a2 = nd_dns_ureg(regs, ND_OFF_REGS_A2);
    u64 msg = 0;
    if (nr == ND_NR_SENDTO || nr == ND_NR_RECVFROM) {
        u->buf = a1;
        u->len = a2;
        u->name = nd_dns_ureg(regs, ND_OFF_REGS_A4);
        return 1;
    }
    if (nr == ND_NR_WRITE || nr == ND_NR_READ) {
        u->buf = a1;
        u->len = a2;
        return 1;
    }
    if (nr == ND_NR_WRITEV || nr == ND_NR_READV) {
        u->iov = a1;
        u->iovlen = a2;
        return 1;
    }
    if (nr == ND_NR_SENDMSG || nr == ND_NR_RECVMSG)
        msg = a1;
    else if (nr == ND_NR_SENDMMSG || nr == ND_NR_RECVMMSG)
        msg = a1 + (u64)nd_dns_mmsg_index(a1, a2, ret) * ND_MMSGHDR_SIZE;
    else
        return 0;                 /* io_uring, splice, a kernel socket: no user buffer to read */
    u->name = nd_dns_uload(msg + ND_MSGHDR_NAME);
    u->iov = nd_dns_uload(msg + ND_MSGHDR_IOV);
    u->iovlen = nd_dns_uload(msg + ND_MSGHDR_IOVLEN);
    return 1;
}

/* the socket's ports (the peer's is 53 for both directions' records) and addresses */
static __always_inline void nd_dns_sk_addrs(struct nd_dns_sk *s, const void *sk)
{
    u16 num = 0;
    bpf_probe_read_kernel(&num, sizeof(num), (const char *)sk + ND_OFF_SKC_NUM);
    s->lport = num;
    s->rport = 53;
    if (s->family == 2) {
        bpf_probe_read_kernel(s->laddr, 4, (const char *)sk + ND_OFF_SKC_RCV_SADDR);
        bpf_probe_read_kernel(s->raddr, 4, (const char *)sk + ND_OFF_SKC_DADDR);
    } else {
        bpf_probe_read_kernel(s->laddr, 16, (const char *)sk + ND_OFF_SKC_V6_RCV_SADDR);
        bpf_probe_read_kernel(s->raddr, 16, (const char *)sk + ND_OFF_SKC_V6_DADDR);
    }
}

static __always_inline u64 nd_dns_sk_cookie(const void *sk)
{
    u64 net = 0, cookie = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + ND_OFF_SOCK_NET);
    if (net)
        bpf_probe_read_kernel(&cookie, sizeof(cookie), (const char *)net + ND_OFF_NET_COOKIE);
    return cookie;
}

/* Copy up to `total` bytes of the user's buffers into data (2 * ND_DNS_SNAP bytes of room). */
static __always_inline u32 nd_dns_ucopy(u8 *data, const struct nd_dns_uio *u, u64 total)
{
    if (u->buf) {
        /* u64 throughout: a u32 is bounds-checked on a zero-extended copy, and the verifier
         * then sees no bound on the register passed */
        u64 n = total;
        if (n > u->len)
            n = u->len;
        if (n > 2 * ND_DNS_SNAP - 1)
            n = 2 * ND_DNS_SNAP - 1;
        if (bpf_probe_read_user(data, n, (const void *)u->buf) < 0)
            return 0;
        return n;
    }
    u32 off = 0;
#pragma unroll
    for (int i = 0; i < ND_DNS_IOVS; i++) {
        if (i >= u->iovlen || off >= total || off >= ND_DNS_SNAP)
            break;
        u64 base = nd_dns_uload(u->iov + i * 16), len = nd_dns_uload(u->iov + i * 16 + 8);
        u64 n = total - off;
        if (n > len)
            n = len;
        if (n > ND_DNS_SNAP - 1)
            n = ND_DNS_SNAP - 1;
        u64 at = off & (ND_DNS_SNAP - 1);
        if (bpf_probe_read_user(data + at, n, (const void *)base) < 0)
            break;
        off += n;
    }
    return off;
}

_Static_assert(__builtin_offsetof(struct nd_dns_sk_small, s) == sizeof(struct nd_dns_hdr) &&
               __builtin_offsetof(struct nd_dns_sk_rec, s) == sizeof(struct nd_dns_hdr),
               "struct nd_dns_sk follows the header in both socket records");

/* fill a reserved socket record's header and socket part (struct nd_dns_sk right after the
 * header in both record sizes) and submit it */
static __always_inline void nd_dns_sk_commit(struct nd_dns_hdr *h, const void *sk, const struct nd_dns_sk *s,
                                             u8 dir, u32 len)
{
    h->ts_ns = bpf_ktime_get_ns();
    h->netns_cookie = nd_dns_sk_cookie(sk);
    h->len = len;
    h->dir = dir;
    __builtin_memcpy((struct nd_dns_sk *)(h + 1), s, sizeof(*s));
    bpf_ringbuf_submit(h, 0);
}

static __always_inline void nd_dns_emit(const void *sk, struct nd_dns_sk *s, u8 dir, const struct nd_dns_uio *u, u32 total)
{
    u32 cpu = bpf_get_smp_processor_id();
    void *ring = nd_dns_rings.lookup(&cpu);
    if (!ring)
        goto lost;
    /* one buffer of at most ND_DNS_SMALL bytes: a small record */
    if (u->buf && total < ND_DNS_SMALL && u->len >= total) {
        struct nd_dns_sk_small *r = bpf_ringbuf_reserve(ring, sizeof(*r), 0);
        if (!r)
            goto lost;
        u64 n = total & (ND_DNS_SMALL - 1);
        if (bpf_probe_read_user(r->data, n, (const void *)u->buf) < 0) {
            bpf_ringbuf_discard(r, 0);
            return;
        }
        nd_dns_sk_commit(&r->h, sk, s, dir, total);
        return;
    }
    struct nd_dns_sk_rec *r = bpf_ringbuf_reserve(ring, sizeof(*r), 0);
    if (!r)
        goto lost;
    u32 n = nd_dns_ucopy(r->data, u, total);
    if (!n) {
        bpf_ringbuf_discard(r, 0);
        return;
    }
    nd_dns_sk_commit(&r->h, sk, s, dir, n);
    return;
lost:
    nd_dns_lost_one();
}

/* family and protocol of an inet socket, 0 when it is not TCP/UDP over IPv4/IPv6 */
static __always_inline int nd_dns_sk_kind(const void *sk, struct nd_dns_sk *s)
{
    u16 family = 0, proto = 0;
    bpf_probe_read_kernel(&family, sizeof(family), (const char *)sk + ND_OFF_SKC_FAMILY);
    if (family != 2 && family != 10)
        return 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), (const char *)sk + ND_OFF_SK_PROTOCOL);
    if (proto != 17 && proto != 6)
        return 0;
    s->family = family;
    s->proto = proto;
    return 1;
}

/* 1: a socket connected to port 53; 0: an unconnected UDP socket (DNS when its datagrams say
 * so); -1: not DNS. Connected elsewhere is the common case: three reads (family, protocol,
 * peer port), one for a socket that is not inet. */
static __always_inline int nd_dns_sk_peer53(const void *sk, struct nd_dns_sk *s)
{
    if (!nd_dns_sk_kind(sk, s))
        return -1;
    u16 dport = 0;
    bpf_probe_read_kernel(&dport, sizeof(dport), (const char *)sk + ND_OFF_SKC_DPORT);
    if (dport)
        return dport == bpf_htons(53) ? 1 : -1;
    return s->proto == 17 ? 0 : -1;
}

int nd_dns_send(u64 *ctx)
{
    const void *sk = (const void *)ctx[0];
    int ret = (int)ctx[1];
    if (!sk || ret <= 0)
        return 0;
    struct nd_dns_sk s = {};
    int connected = nd_dns_sk_peer53(sk, &s);
    if (connected < 0)
        return 0;
    struct nd_dns_uio u = {};
    if (!nd_dns_uio_of(&u, ret))
        return 0;
    nd_dns_sk_addrs(&s, sk);
    if (!connected) {
        /* unconnected UDP: DNS only when msg_name says port 53 */
        struct { u16 family; u16 port; u8 addr4[4]; } sa = {};     /* sockaddr_in's head */
        if (!u.name || bpf_probe_read_user(&sa, sizeof(sa), (const void *)u.name) < 0)
            return 0;
        if (sa.port != bpf_htons(53))
            return 0;
        struct nd_dns_peer peer = {.port = 53};
        __builtin_memset(s.raddr, 0, sizeof(s.raddr));
        if (sa.family == 2)
            __builtin_memcpy(s.raddr, sa.addr4, 4);
        else if (sa.family != 10 || bpf_probe_read_user(s.raddr, 16, (const void *)(u.name + 8)) < 0)
            return 0;                 /* sockaddr_in6: the address after the flow label */
        peer.family = sa.family;
        __builtin_memcpy(peer.addr, s.raddr, 16);
        u64 key = (u64)sk;
        nd_dns_socks.update(&key, &peer);
    }
    s.tgid = bpf_get_current_pid_tgid() >> 32;
    nd_dns_emit(sk, &s, ND_DNS_SEND, &u, (u32)ret);
    return 0;
}

int nd_dns_recv(u64 *ctx)
{
    const void *sk = (const void *)ctx[0];
    int ret = (int)ctx[1], flags = (int)ctx[2];
    if (!sk || ret <= 0 || (flags & ND_MSG_PEEK))
        return 0;
    struct nd_dns_sk s = {};
    int connected = nd_dns_sk_peer53(sk, &s);
    if (connected < 0)
        return 0;
    struct nd_dns_peer *peer = 0;
    if (!connected) {
        u64 key = (u64)sk;
        peer = nd_dns_socks.lookup(&key);
        if (!peer)
            return 0;
    }
    struct nd_dns_uio u = {};
    if (!nd_dns_uio_of(&u, ret))
        return 0;
    nd_dns_sk_addrs(&s, sk);
    if (peer) {
        __builtin_memcpy(s.raddr, peer->addr, 16);
        s.flags = ND_DNS_PEER_GUESSED;
    }
    s.tgid = bpf_get_current_pid_tgid() >> 32;
    nd_dns_emit(sk, &s, ND_DNS_RECV, &u, (u32)ret);
    return 0;
}
#endif /* ND_DNS_SOCK */
