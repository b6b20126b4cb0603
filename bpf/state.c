/* sock:inet_sock_set_state drives both signals: the start and asynchronous outcome of a connect,
 * and the child sockets a listener establishes. Classic tracepoint: fields come from the running
 * kernel's format file (BCC generates the args struct from it). Raw tracepoint (-DND_RAW_TP):
 * the arguments (sk, oldstate, newstate), the tuple read from the socket only for transitions
 * netdiag acts on. State values from -DND_TCP_* flags either way. */

/* Does netdiag act on this transition? (Before any field is read.) */
static __always_inline int nd_state_wanted(int oldstate, int newstate)
{
#ifdef ND_CONNECT_MODE
    if (oldstate == ND_TCP_CLOSE && newstate == ND_TCP_SYN_SENT)
        return 1;
    if (oldstate == ND_TCP_SYN_SENT)
        return 1;
#endif
    if (oldstate == ND_TCP_SYN_RECV && newstate == ND_TCP_ESTABLISHED)
        return 1;
#ifdef ND_AGGREGATE
    if (oldstate == ND_TCP_ESTABLISHED || newstate == ND_TCP_CLOSE)
        return 1;
#endif
#ifdef ND_ACCEPT_MODE
    if (newstate == ND_TCP_CLOSE)
        return 1;
#endif
    return 0;
}

static __always_inline void nd_state_change(void *ctx, u64 sk, int oldstate, int newstate, struct nd_tuple *t)
{
#ifdef ND_CONNECT_MODE
    if (oldstate == ND_TCP_CLOSE && newstate == ND_TCP_SYN_SENT) {
#if ND_CONNECT_MODE == ND_MODE_TRACEPOINT
        if (nd_tuple_load(t, sk, 1))
            nd_connect_begin(sk, t);
#endif
        return;
    }
    if (oldstate == ND_TCP_SYN_SENT) {
        nd_connect_state(ctx, sk, newstate, t);
        return;
    }
#endif
    if (oldstate == ND_TCP_SYN_RECV && newstate == ND_TCP_ESTABLISHED) {
        if (!nd_tuple_load(t, sk, 1))
            return;
#ifdef ND_AGGREGATE
        nd_agg_inbound_established(sk, t);
#endif
#ifdef ND_ACCEPT_MODE
        nd_accept_established(ctx, sk, t);
#endif
        return;
    }
#ifdef ND_AGGREGATE
    if (oldstate == ND_TCP_ESTABLISHED)
        nd_agg_left_established(sk, t, newstate);
    else if (newstate == ND_TCP_CLOSE)
        nd_agg_closed(sk, t);
#endif
#ifdef ND_ACCEPT_MODE
    if (newstate == ND_TCP_CLOSE) {
        u64 skey = nd_sk_num(sk);
        nd_pending_accept.delete(&skey);     /* closed before anyone accepted it */
    }
#endif
}

#ifdef ND_BTF_TP
/* loaded as tp_btf by netdiag/kernel/engine.py (BCC has no loader for it): ctx[0] is a typed sock * */
int nd_btf_inet_sock_set_state(u64 *ctx)
{
    const void *skp = (const void *)ctx[0];
    int oldstate = (int)ctx[1], newstate = (int)ctx[2];
    if (!skp || !nd_state_wanted(oldstate, newstate))
        return 0;
    struct nd_tuple t = {};
    nd_state_change(ctx, (u64)skp, oldstate, newstate, &t);
    return 0;
}
#elif defined(ND_RAW_TP)
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    const void *skp = (const void *)ctx->args[0];
    int oldstate = (int)ctx->args[1], newstate = (int)ctx->args[2];
    if (!nd_state_wanted(oldstate, newstate))
        return 0;
    struct nd_tuple t = {};         /* read from the socket on first use (nd_tuple_load) */
    nd_state_change(ctx, (u64)skp, oldstate, newstate, &t);
    return 0;
}
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    int oldstate = args->oldstate, newstate = args->newstate;
    if (!nd_state_wanted(oldstate, newstate))
        return 0;
    struct nd_tuple t = {};
    ND_TUPLE_FROM_ARGS(t, args);
    nd_state_change(args, (u64)args->skaddr, oldstate, newstate, &t);
    return 0;
}
#endif
