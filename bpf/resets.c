/* Signal "resets": RSTs sent (with the kernel's reason where the tracepoint has one) and
 * received, counted against the outbound destination or the local service endpoint.
 * tcp:tcp_send_reset's layout differs between kernels; the engine passes what the running
 * kernel's format file has: ND_RST_SOCKADDR (6.10+: saddr/daddr hold sockaddr images, from the
 * RST sender's side, and a socket-less RST is traced too) or the older sport/dport fields. */

/* The tracepoint struct BCC generates names this enum; netdiag includes no kernel header that
 * defines it (values come from the format file), so it is declared here, as an int. */
enum sk_rst_reason { ND_SK_RST_REASON_DECLARED_BY_NETDIAG };

static __always_inline void nd_rst_count(u64 sk, const void *skb, u32 netns, struct nd_tuple *t,
                                         int connecting, int out, u32 reason, int typed)
{
    struct nd_dst_key k = {};
    u32 pid = 0;                        /* outbound: the process that opened the connection */
    u32 dir = nd_classify(sk, skb, netns, t, connecting, &k, typed, &pid);
#ifdef ND_PER_PROCESS
    struct nd_proc_val *pv = nd_proc(pid, k.netns, 0);
    if (pv) {
        if (out)
            pv->resets_out += 1;
        else
            pv->resets_in += 1;
    }
#endif
    struct nd_dst_val *v = nd_dst(&k, dir);
    if (!v)
        return;
    if (out) {
        v->resets_out += 1;
#ifdef ND_RST_HAS_REASON
        nd_code_add(&k, ND_CODE_RST_OUT_REASON, reason);
#endif
    } else {
        v->resets_in += 1;
    }
}

#ifdef ND_BTF_TP
#ifdef ND_RST_SOCKADDR
/* The segment a socket-less RST answers, reversed (its destination is our side), as the
 * classic record has it: IP header at head + network_header, TCP header at data. */
static __always_inline int nd_tuple_of_rst_skb(struct nd_tuple *t, const void *skb)
{
    const u8 *head = (const u8 *)ND_LD(u64, skb, ND_OFF_SKB_HEAD);
    const u8 *data = (const u8 *)ND_LD(u64, skb, ND_OFF_SKB_DATA);
    u16 nh = ND_LD(u16, skb, ND_OFF_SKB_NETWORK_HEADER);
    u16 proto = ND_LD(u16, skb, ND_OFF_SKB_PROTOCOL);
    u16 ports[2] = {};
    if (!head || !data || bpf_probe_read_kernel(ports, 4, data) < 0)
        return 0;
    if (proto == htons(0x0800)) {
        u8 a[8] = {};
        if (bpf_probe_read_kernel(a, 8, head + nh + 12) < 0)
            return 0;
        t->family = AF_INET;
        __builtin_memcpy(t->daddr, a, 4);          /* the segment's source: the RST's destination */
        __builtin_memcpy(t->saddr, a + 4, 4);
    } else {
        if (bpf_probe_read_kernel(t->daddr, 16, head + nh + 8) < 0 ||
            bpf_probe_read_kernel(t->saddr, 16, head + nh + 24) < 0)
            return 0;
        t->family = AF_INET6;
    }
    t->dport = ntohs(ports[0]);
    t->sport = ntohs(ports[1]);
    t->pad = 1;
    return 1;
}
#endif

/* loaded as tp_btf by netdiag/kernel/engine.py: (sk, skb[, reason]), both BTF-typed. The tuple is the
 * classic record's: from a full socket (read only if the row needs it: the RST an abort sends
 * takes its row from the just-closed slot), else from the segment the RST answers (6.10+). */
int nd_btf_tcp_send_reset(u64 *ctx)
{
    const void *skp = (const void *)ctx[0];
    const void *skb = (const void *)ctx[1];
    u64 sk = (u64)skp;
    struct nd_tuple t = {};             /* pad 0: not read yet */
    u8 state = skp ? ND_LD(u8, skp, ND_OFF_SKC_STATE) : 0;
    if (skp && (state == ND_TCP_TIME_WAIT || state == ND_TCP_NEW_SYN_RECV)) {
#ifdef ND_RST_SOCKADDR
        sk = 0;                         /* not a full socket: the record takes the segment's */
#else
        nd_tuple_of_sk(&t, skp);        /* sock_common's fields are there in any socket */
#endif
    }
    if (!sk && !t.pad) {
#ifdef ND_RST_SOCKADDR
        if (!skb || !nd_tuple_of_rst_skb(&t, skb))
            return 0;
#else
        return 0;
#endif
#ifdef ND_EPHEMERAL_LO
        if (t.sport >= ND_EPHEMERAL_LO && t.sport <= ND_EPHEMERAL_HI)
            t.sport = 0;                /* as below: one row per local address */
#endif
    }
    u32 netns = nd_netns_early(skp, skb, ND_TP_TYPED);
    if (!nd_netns_allowed(netns))
        return 0;
    int connecting = sk && state == ND_TCP_SYN_SENT;
    u32 reason = 0;
#ifdef ND_RST_HAS_REASON
    reason = (u32)ctx[2];
#endif
    nd_rst_count(sk, sk ? 0 : skb, netns, &t, connecting, 1, reason, ND_TP_TYPED);
    nd_count(ND_STAT_RST_OUT);
    return 0;
}
#else
TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
    struct nd_tuple t = {};
    u64 sk = (u64)args->skaddr;
#ifdef ND_RST_SOCKADDR
    u16 fam = 0, port = 0;
    __builtin_memcpy(&fam, args->saddr, 2);
    t.family = fam;
    t.pad = 1;
    __builtin_memcpy(&port, args->saddr + 2, 2);
    t.sport = ntohs(port);
    __builtin_memcpy(&port, args->daddr + 2, 2);
    t.dport = ntohs(port);
    if (fam == AF_INET6) {
        __builtin_memcpy(t.saddr, args->saddr + 8, 16);
        __builtin_memcpy(t.daddr, args->daddr + 8, 16);
    } else {
        __builtin_memcpy(t.saddr, args->saddr + 4, 4);
        __builtin_memcpy(t.daddr, args->daddr + 4, 4);
    }
#else
    ND_TUPLE_FROM_ARGS(t, args);
#endif
    if (t.family != AF_INET && t.family != AF_INET6)
        return 0;
#ifdef ND_EPHEMERAL_LO
    /* A socket-less RST from a port in the ephemeral range answers a segment for a client
     * socket that is gone (a FIN crossing an abort, say): one row per local address (port 0),
     * not one per port, so they cannot crowd destinations out of the map. */
    if (!sk && t.sport >= ND_EPHEMERAL_LO && t.sport <= ND_EPHEMERAL_HI)
        t.sport = 0;
#endif
    u32 netns = nd_netns_early((void *)sk, args->skbaddr, 0);
    if (!nd_netns_allowed(netns))
        return 0;
    int connecting = sk && args->state == ND_TCP_SYN_SENT;
    u32 reason = 0;
#ifdef ND_RST_HAS_REASON
    reason = args->reason;
#endif
    nd_rst_count(sk, args->skbaddr, netns, &t, connecting, 1, reason, 0);
    nd_count(ND_STAT_RST_OUT);
    return 0;
}
#endif

#ifdef ND_BTF_TP
/* loaded as tp_btf by netdiag/kernel/engine.py (BCC has no loader for it) */
int nd_btf_tcp_receive_reset(u64 *ctx)
{
    const void *skp = (const void *)ctx[0];
    if (!skp)
        return 0;
    u64 sk = (u64)skp;
    struct nd_tuple t = {};
    nd_tuple_of_sk(&t, skp);
#elif defined(ND_RAW_TP)
RAW_TRACEPOINT_PROBE(tcp_receive_reset)
{
    const void *skp = (const void *)ctx->args[0];
    u64 sk = (u64)skp;
    struct nd_tuple t = {};
    nd_tuple_of_sk(&t, skp);
#else
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    struct nd_tuple t = {};
    u64 sk = (u64)args->skaddr;
    ND_TUPLE_FROM_ARGS(t, args);
#endif
    u32 netns = nd_netns_early((void *)sk, 0, ND_TP_TYPED);
    if (!nd_netns_allowed(netns))
        return 0;
    nd_rst_count(sk, 0, netns, &t, 0, 0, 0, ND_TP_TYPED);
    nd_count(ND_STAT_RST_IN);
    return 0;
}
