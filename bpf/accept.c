/* Signal "accept": a connection established on a listener and handed to a process.
 *
 * The state tracepoint (state.c) remembers each child socket that goes SYN_RECV -> ESTABLISHED
 * with its addresses and netns; the accept side then attributes it to the accepting process:
 *   ND_MODE_KPROBE     kretprobe on inet_csk_accept (returns the child struct sock *)
 *   ND_MODE_FENTRY     fexit on inet_csk_accept
 *   ND_MODE_TRACEPOINT syscalls:sys_exit_accept4 / sys_exit_accept: the new fd is followed to its
 *                      struct sock through BTF offsets (task->files->fdt->fd[fd]->private_data->sk). */

struct nd_pending {
    u64 ts_ns;          /* established; in a marker, when accept() returned */
    u32 netns;
    u32 accepted;       /* 1: a marker (see nd_accept_done) */
    u32 pid;            /* marker: the task that accepted */
    u32 tid;
    struct nd_tuple t;
#if defined(ND_STREAM) || defined(ND_PER_PROCESS)
    char comm[16];      /* marker */
#endif
};

BPF_F_TABLE("lru_hash", u64, struct nd_pending, nd_pending_accept, ND_MAX_CONNS, BPF_F_NO_COMMON_LRU);

/* an accept of the connection p by task pid/tid (comm: its name, or 0 for the current task's) */
static __always_inline void nd_accept_report(void *ctx, struct nd_pending *p, u32 pid, u32 tid,
                                             u64 latency_ns, const char *comm)
{
    nd_count(ND_STAT_ACCEPT);
#ifdef ND_AGGREGATE
    nd_agg_accepted(p->netns, &p->t, pid, comm);
#endif
#ifdef ND_STREAM
    struct nd_event ev = {};
    nd_event_fill(&ev, ND_EV_ACCEPT, bpf_ktime_get_ns(), latency_ns, p->netns, pid, tid, &p->t);
    if (comm)
        __builtin_memcpy(ev.comm, comm, 16);
    else
        bpf_get_current_comm(ev.comm, sizeof(ev.comm));
    nd_emit(ctx, &ev);
#endif
}

/* A child socket went SYN_RECV -> ESTABLISHED: remember it until accept() takes it. */
static __always_inline void nd_accept_established(void *ctx, u64 sk, struct nd_tuple *t)
{
    u64 skey = nd_sk_num(sk);
    struct nd_pending p = {};
    p.netns = nd_netns_sk((void *)sk, ND_TP_TYPED);   /* from the state tracepoint */
    if (!nd_netns_allowed(p.netns))
        return;
    p.ts_ns = bpf_ktime_get_ns();
    p.t = *t;
    if (nd_pending_accept.insert(&skey, &p) == 0)
        return;
    struct nd_pending *m = nd_pending_accept.lookup(&skey);
    if (m && m->accepted) {
        /* accept() took it first: the listener queues a child before its state change */
        m->netns = p.netns;
        m->t = p.t;
#if defined(ND_STREAM) || defined(ND_PER_PROCESS)
        nd_accept_report(ctx, m, m->pid, m->tid, 0, m->comm);
#else
        nd_accept_report(ctx, m, m->pid, m->tid, 0, 0);
#endif
        nd_pending_accept.delete(&skey);
        return;
    }
    nd_pending_accept.update(&skey, &p);   /* an entry left by an earlier socket at this address */
}

/* accept() returned the child socket sk. */
static __always_inline void nd_accept_done(void *ctx, u64 sk)
{
    u64 skey = nd_sk_num(sk);
    if (!sk)
        return;
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!nd_pid_allowed(pid))
        return;
    struct nd_pending *p = nd_pending_accept.lookup(&skey);
    if (!p) {
#ifdef ND_OFF_SKC_STATE
        /* The listener queues a child before it moves it SYN_RECV -> ESTABLISHED, so accept()
         * on another CPU can take it before that state change is traced: leave a marker, and
         * the state change reports the accept. */
        u8 state = 0;
        bpf_probe_read_kernel(&state, sizeof(state), (const char *)sk + ND_OFF_SKC_STATE);
        if (state == ND_TCP_SYN_RECV) {
            struct nd_pending m = {};
            m.accepted = 1;
            m.pid = pid;
            m.tid = (u32)id;
            m.ts_ns = bpf_ktime_get_ns();
#if defined(ND_STREAM) || defined(ND_PER_PROCESS)
            bpf_get_current_comm(m.comm, sizeof(m.comm));
#endif
            if (nd_pending_accept.insert(&skey, &m) == 0)
                return;
        }
        /* A second look: the state change may have been traced (its entry added) since the
         * first, whether or not the new state was stored yet (the tracepoint runs before). */
        p = nd_pending_accept.lookup(&skey);
#endif
        if (!p) {
            nd_count(ND_STAT_ACCEPT_UNTRACKED);   /* established before netdiag attached, or filtered */
            return;
        }
    }
    if (p->accepted)
        return;                             /* a marker of ours: not accepted twice */
    nd_accept_report(ctx, p, pid, (u32)id, bpf_ktime_get_ns() - p->ts_ns, 0);
    nd_pending_accept.delete(&skey);
}

#if ND_ACCEPT_MODE == ND_MODE_KPROBE
int nd_kretp_inet_csk_accept(struct pt_regs *ctx)
{
    nd_accept_done(ctx, (u64)PT_REGS_RC(ctx));
    return 0;
}
#elif ND_ACCEPT_MODE == ND_MODE_FENTRY
#if ND_ACCEPT_NARGS == 2
KRETFUNC_PROBE(inet_csk_accept, void *sk, void *arg, void *ret)
#else
KRETFUNC_PROBE(inet_csk_accept, void *sk, int flags, int *err, bool kern, void *ret)
#endif
{
    nd_accept_done(ctx, (u64)ret);
    return 0;
}
#else
static __always_inline u64 nd_sock_of_fd(long fd)
{
    void *p = NULL;
    void *task = (void *)bpf_get_current_task();
    bpf_probe_read_kernel(&p, sizeof(p), (char *)task + ND_OFF_TASK_FILES);      /* files_struct * */
    if (!p) return 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)p + ND_OFF_FILES_FDT);          /* fdtable * */
    if (!p) return 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)p + ND_OFF_FDT_FD);             /* struct file ** */
    if (!p) return 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)p + fd * sizeof(void *));       /* struct file * */
    if (!p) return 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)p + ND_OFF_FILE_PRIV);          /* struct socket * */
    if (!p) return 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)p + ND_OFF_SOCKET_SK);          /* struct sock * */
    return (u64)p;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    if (args->ret >= 0)
        nd_accept_done(args, nd_sock_of_fd(args->ret));
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    if (args->ret >= 0)
        nd_accept_done(args, nd_sock_of_fd(args->ret));
    return 0;
}
#endif
