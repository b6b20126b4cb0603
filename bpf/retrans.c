/* Signal "retrans": SYN retransmits (a destination not answering), SYN-ACK retransmits (a local
 * listener's peers not completing the handshake) and data retransmits. */

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    struct nd_tuple t = {};
    u64 sk = (u64)args->skaddr;
    ND_TUPLE_FROM_ARGS(t, args);
    u32 netns = nd_netns_early((void *)sk, 0, 0);
    if (!nd_netns_allowed(netns))
        return 0;
    int syn = args->state == ND_TCP_SYN_SENT;
    struct nd_dst_key k = {};
    u32 pid = 0;
    u32 dir = nd_classify(sk, 0, netns, &t, syn, &k, 0, &pid);
    struct nd_dst_val *v = nd_dst(&k, dir);
    if (!v)
        return 0;
    if (syn)
        v->syn_retrans += 1;
    else
        v->retrans += 1;
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    struct nd_tuple t = {};
    ND_TUPLE_FROM_ARGS(t, args);
    u32 netns = nd_netns_of_sk((void *)args->skaddr);
    if (!nd_netns_allowed(netns))
        return 0;
    struct nd_dst_key k = {};
    nd_key_local(&k, netns, &t);
    struct nd_dst_val *v = nd_dst(&k, ND_DIR_IN);
    if (v)
        v->syn_retrans += 1;
    return 0;
}
