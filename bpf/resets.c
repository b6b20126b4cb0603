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
    u32 dir = nd_classify(sk, skb, netns, t, connecting, &k, typed);
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

#ifdef ND_BTF_TP
/* loaded as tp_btf by netdiag/engine.py (BCC has no loader for it) */
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
