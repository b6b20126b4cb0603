/* Signal "connect": attempt, outcome (errno), latency, pid/comm/netns, both address families.
 *
 * Modes (one chosen per run by netdiag/kernel/engine.py, -DND_CONNECT_MODE=...):
 *   ND_MODE_KPROBE     kprobe+kretprobe on tcp_v4_connect/tcp_v6_connect; dst from the sockaddr
 *                      argument (a UAPI struct), synchronous errno from the return value.
 *   ND_MODE_FENTRY     the same through fentry/fexit.
 *   ND_MODE_TRACEPOINT sock:inet_sock_set_state CLOSE->SYN_SENT (runs inside connect(), so the
 *                      current task is the caller) + syscalls:sys_exit_connect for the errno.
 * In every mode the asynchronous outcome (SYN_SENT -> ESTABLISHED / CLOSE) comes from the state
 * tracepoint in state.c, with the errno read from sk->sk_err at that moment. */


/* struct nd_conn and its table (nd_conn_get/put/del): nd_common.h (watch's aggregation keeps using them) */
/* thread inside connect() -> its socket (the synchronous part of the outcome) */
BPF_TABLE("lru_hash", u32, u64, nd_inconnect, 16384);

/* The outcome of an attempt: counted, aggregated per destination (watch), streamed (trace). */
static __always_inline void nd_connect_emit(void *ctx, u64 sk, struct nd_conn *c, int err)
{
    u64 now = bpf_ktime_get_ns();
    nd_count(err ? ND_STAT_CONNECT_FAIL : ND_STAT_CONNECT_OK);
#ifdef ND_AGGREGATE
    nd_agg_outcome(sk, c->netns, &c->t, err, now - c->ts_ns, c->pid);
#endif
#ifdef ND_STREAM
    struct nd_event ev = {};
    nd_event_fill(&ev, ND_EV_CONNECT, now, now - c->ts_ns, c->netns, c->pid, c->tid, &c->t);
    ev.err = err;
    __builtin_memcpy(ev.comm, c->comm, 16);
    nd_emit(ctx, &ev);
#endif
}

/* A connect attempt begins on socket sk, in the calling task's context. */
static __always_inline void nd_connect_begin(u64 sk, struct nd_tuple *t)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    if (!nd_pid_allowed(pid))
        return;
    u32 netns = nd_netns_sk((void *)sk, ND_TP_TYPED);  /* state tracepoint or fentry: typed */
    if (!nd_netns_allowed(netns))
        return;
    struct nd_conn c = {};
    c.ts_ns = bpf_ktime_get_ns();
    c.pid = pid;
    c.tid = tid;
    c.netns = netns;
    c.t = *t;
#ifdef ND_STREAM
    bpf_get_current_comm(c.comm, sizeof(c.comm));
#endif
    u64 num = nd_sk_num(sk);
    nd_conn_put(num, &c);
#ifndef ND_NO_SYSCALL_TP
    nd_inconnect.update(&tid, &num);
#endif
    nd_count(ND_STAT_CONNECT_ATTEMPT);
#ifdef ND_AGGREGATE
    nd_agg_connect(sk, netns, t, pid);
#endif
}

/* connect() (or tcp_v*_connect) returned ret in the calling task. */
static __always_inline void nd_connect_return(void *ctx, long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *skp = nd_inconnect.lookup(&tid);
    if (!skp)
        return;
    u64 num = *skp;                   /* nd_sk_num() of the socket */
    nd_inconnect.delete(&tid);
    if (ret >= 0 || ret == -EINPROGRESS)
        return;                       /* outcome arrives through the state tracepoint */
    struct nd_conn *c = nd_conn_get(num);
    if (!c)
        return;
    if (!c->sync_done)
        nd_connect_emit(ctx, num, c, (int)-ret);
    nd_conn_del(num);
}

/* state tracepoint: sk left SYN_SENT for newstate (ESTABLISHED or CLOSE). */
static __always_inline void nd_connect_state(void *ctx, u64 sk, int newstate, struct nd_tuple *t)
{
    u64 num = nd_sk_num(sk);
    struct nd_conn *c = nd_conn_get(num);
    if (!c)
        return;
    nd_tuple_load(t, sk, 0);            /* ours: a TCP socket */
    c->t.sport = t->sport;
    __builtin_memcpy(c->t.saddr, t->saddr, 16);
    if (newstate == ND_TCP_ESTABLISHED) {
        nd_connect_emit(ctx, sk, c, 0);
#ifdef ND_AGGREGATE
        c->state = ND_CONN_ESTABLISHED;    /* kept: its close and resets find it (agg.c) */
#else
        nd_conn_del(num);
#endif
        return;
    }
    int err = nd_sk_err((void *)sk);
#ifdef ND_NO_SYSCALL_TP
    /* No syscall tracepoint (watch, for overhead): a socket that leaves SYN_SENT for CLOSE with no
     * error and no local port never got one: inet_hash_connect() failed, EADDRNOTAVAIL. */
    if (err == 0)
        err = t->sport == 0 ? EADDRNOTAVAIL : ECONNABORTED;
    nd_connect_emit(ctx, sk, c, err);
    nd_conn_del(num);
    return;
#endif
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *inconn = nd_inconnect.lookup(&tid);
    if (err == 0 && inconn && *inconn == num)
        return;                       /* synchronous failure: connect()'s return carries the errno */
    nd_connect_emit(ctx, sk, c, err ? err : ECONNABORTED);
    if (inconn && *inconn == num)
        c->sync_done = 1;             /* connect() still returns: do not report twice */
    else
        nd_conn_del(num);
}

#if ND_CONNECT_MODE == ND_MODE_KPROBE || ND_CONNECT_MODE == ND_MODE_FENTRY
static __always_inline void nd_connect_enter(void *sk, void *uaddr)
{
    struct nd_tuple t = {};
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), uaddr);   /* sa_family is the first member */
    t.family = family;
    if (family == AF_INET) {
        struct sockaddr_in sin = {};
        bpf_probe_read_kernel(&sin, sizeof(sin), uaddr);
        t.dport = ntohs(sin.sin_port);
        __builtin_memcpy(t.daddr, &sin.sin_addr.s_addr, 4);
    } else if (family == AF_INET6) {
        struct sockaddr_in6 sin6 = {};
        bpf_probe_read_kernel(&sin6, sizeof(sin6), uaddr);
        t.dport = ntohs(sin6.sin6_port);
        __builtin_memcpy(t.daddr, &sin6.sin6_addr, 16);
    } else {
        return;
    }
    t.pad = 1;                        /* filled (destination only: the source comes later) */
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 key = (u64)sk;
    u64 *inconn = nd_inconnect.lookup(&tid);
    if (inconn && *inconn == key)
        return;                       /* tcp_v6_connect -> tcp_v4_connect for a v4-mapped peer */
    nd_connect_begin(key, &t);
}
#endif

#if ND_CONNECT_MODE == ND_MODE_KPROBE
int nd_kp_tcp_connect(struct pt_regs *ctx, void *sk, void *uaddr)
{
    nd_connect_enter(sk, uaddr);
    return 0;
}

int nd_kretp_tcp_connect(struct pt_regs *ctx)
{
    nd_connect_return(ctx, (int)PT_REGS_RC(ctx));
    return 0;
}
#elif ND_CONNECT_MODE == ND_MODE_FENTRY
KFUNC_PROBE(tcp_v4_connect, void *sk, void *uaddr, int addr_len)
{
    nd_connect_enter(sk, uaddr);
    return 0;
}
KRETFUNC_PROBE(tcp_v4_connect, void *sk, void *uaddr, int addr_len, int ret)
{
    nd_connect_return(ctx, ret);
    return 0;
}
KFUNC_PROBE(tcp_v6_connect, void *sk, void *uaddr, int addr_len)
{
    nd_connect_enter(sk, uaddr);
    return 0;
}
KRETFUNC_PROBE(tcp_v6_connect, void *sk, void *uaddr, int addr_len, int ret)
{
    nd_connect_return(ctx, ret);
    return 0;
}
#elif !defined(ND_NO_SYSCALL_TP)
TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    nd_connect_return(args, args->ret);
    return 0;
}
#endif
