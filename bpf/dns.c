/* DNS capture for `watch --per-domain` on the cgroup socket-buffer hooks (cgroup_skb), attached
 * through bpf_links to the root of the cgroup v2 hierarchy: it runs for the packets of local
 * sockets only, in every network namespace, and clones nothing. A packet a local socket sends to
 * port 53 (a query, or its TCP handshake) or receives from port 53 (an answer) is copied, from
 * its IP header on, up to ND_DNS_SNAP bytes (the record has the packet's length: userspace
 * takes min(len, the record's room)), into its CPU's ring buffer with the socket's namespace
 * cookie; userspace (netdiag/dns/cgcapture.py) decodes it as it decodes a packet socket's.
 * Every program returns 1: the packet always goes on. Needs bpf_get_netns_cookie() in
 * cgroup_skb programs; without it netdiag falls back to packet sockets. */

#ifndef ND_DNS_SNAP
#define ND_DNS_SNAP 2048
#endif
#ifndef ND_DNS_RB_PAGES
#define ND_DNS_RB_PAGES 1024
#endif
#ifndef ND_DNS_MAX_CPUS
#define ND_DNS_MAX_CPUS 1024
#endif

#define ND_DNS_EGRESS 1
#define ND_DNS_INGRESS 2

struct nd_dns_hdr {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 netns_cookie;
    u32 len;            /* the packet's length; the data after the header holds min(len, room) */
    u8 dir;             /* ND_DNS_EGRESS / ND_DNS_INGRESS */
    u8 pad[3];
};

/* most lookups fit a small record; bigger packets (EDNS, DNS over TCP) take a full one */
#define ND_DNS_SMALL 512
struct nd_dns_small {
    struct nd_dns_hdr h;
    u8 data[ND_DNS_SMALL];
};
struct nd_dns_rec {
    struct nd_dns_hdr h;
    u8 data[ND_DNS_SNAP];
};

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
