/* Signal "drops": every skb the kernel drops, by the kernel's drop reason (names from the
 * running kernel's format file) and network namespace (of the device, through BTF offsets). */

/* named by the tracepoint struct BCC generates; values come from the format file */
enum skb_drop_reason { ND_SKB_DROP_REASON_DECLARED_BY_NETDIAG };

#ifdef ND_RAW_TP
/* raw arguments: (struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...) */
RAW_TRACEPOINT_PROBE(kfree_skb)
{
    const void *skb = (const void *)ctx->args[0];
    u32 reason = 0;
#ifdef ND_DROP_HAS_REASON
    reason = (u32)ctx->args[2];
#endif
#else
TRACEPOINT_PROBE(skb, kfree_skb)
{
    const void *skb = args->skbaddr;
    u32 reason = 0;
#ifdef ND_DROP_HAS_REASON
    reason = args->reason;
#endif
#endif
    struct nd_drop_key k = {};
    k.netns = nd_netns_of_skb(skb);
    if (!nd_netns_allowed(k.netns))
        return 0;
    k.reason = reason;
    u64 one = 1;
    u64 *v = nd_drops.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        nd_drops.update(&k, &one);
    return 0;
}
