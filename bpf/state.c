/* sock:inet_sock_set_state drives both signals: the start and asynchronous outcome of a connect,
 * and the child sockets a listener establishes. Fields come from the running kernel's format
 * file (BCC generates the args struct from it), state values from -DND_TCP_* flags. */

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    int oldstate = args->oldstate, newstate = args->newstate;
    u64 sk = (u64)args->skaddr;
    struct nd_tuple t = {};
    ND_TUPLE_FROM_ARGS(t, args);

#ifdef ND_CONNECT_MODE
    if (oldstate == ND_TCP_CLOSE && newstate == ND_TCP_SYN_SENT) {
#if ND_CONNECT_MODE == ND_MODE_TRACEPOINT
        nd_connect_begin(sk, &t);
#endif
        return 0;
    }
    if (oldstate == ND_TCP_SYN_SENT) {
        nd_connect_state(args, sk, newstate, &t);
        return 0;
    }
#endif
    if (oldstate == ND_TCP_SYN_RECV && newstate == ND_TCP_ESTABLISHED) {
#ifdef ND_AGGREGATE
        nd_agg_inbound_established(sk, &t);
#endif
#ifdef ND_ACCEPT_MODE
        nd_accept_established(sk, &t);
#endif
        return 0;
    }
#ifdef ND_AGGREGATE
    if (oldstate == ND_TCP_ESTABLISHED)
        nd_agg_left_established(sk, &t, newstate);
    else if (newstate == ND_TCP_CLOSE)
        nd_agg_closed(sk, &t);
#endif
#ifdef ND_ACCEPT_MODE
    if (newstate == ND_TCP_CLOSE)
        nd_pending_accept.delete(&sk);     /* closed before anyone accepted it */
#endif
    return 0;
}
