/* Signal "snat": source-NAT port allocation and conntrack insert failures, per
 * (netns of the NAT, NAT address, destination ip:port, protocol), counted in the kernel.
 *
 * Mode ND_MODE_KPROBE only (no tracepoint exists for these; without kprobes the ctnetlink path
 * of netdiag/sources/conntrack/ is used instead):
 *   nf_nat_setup_info(ct, range, maniptype)  entry: the nf_nat_range2 (a UAPI struct) of a SRC
 *       mapping (layout of the UAPI header); return (NF_ACCEPT): the chosen reply tuple, read from ct through BTF offsets.
 *       A source-NATed ct (reply dst != orig src) waits in nd_snat_pending for its confirmation.
 *   __nf_conntrack_confirm(skb)  return NF_ACCEPT with the ct confirmed: one allocation, one port
 *       in use; return NF_DROP: one insert failure (a full port range shows up here: NAT found no
 *       free tuple and the clashing entry cannot be inserted), ct from skb->_nfct.
 *   nf_ct_delete(ct) (removal from the table: timeout, flush, early drop, netns exit) and
 *       nf_conntrack_free(ct) (every ct, as a catch-all): the port is released.
 * Entries that existed before attach are not known here (no allocation was seen for them).
 * Kernel structs are read through -DND_OFF_CT_* offsets from the running kernel's BTF only. */

/* struct nf_nat_range2 as include/uapi/linux/netfilter/nf_nat.h defines it (a UAPI struct, so
 * its layout is ABI). Spelled out here: that header pulls in kernel-internal ones through
 * <linux/netfilter.h>, which clash with the enums nd_common.h declares. */
struct nd_nat_range2 {
    unsigned int flags;
    u32 min_addr[4];        /* union nf_inet_addr */
    u32 max_addr[4];
    u16 min_proto;          /* union nf_conntrack_man_proto (__be16 all) */
    u16 max_proto;
    u16 base_proto;
};

#define ND_NF_DROP 0
#define ND_NF_ACCEPT 1
#define ND_NAT_MANIP_SRC 0          /* enum nf_nat_manip_type */
#define ND_CT_DIR_ORIGINAL 0        /* enum ip_conntrack_dir */
#define ND_CT_DIR_REPLY 1
#define ND_IPS_CONFIRMED (1 << 3)   /* UAPI IPS_CONFIRMED */
#define ND_NFCT_PTRMASK (~7UL)      /* skb->_nfct: ct pointer | ctinfo */
#ifndef ND_MAX_SNAT_ROWS
#define ND_MAX_SNAT_ROWS 16384
#endif
#ifndef ND_MAX_SNAT_LIVE
#define ND_MAX_SNAT_LIVE 262144
#endif

/* struct nd_snat_key, struct nd_snat_val: nd_events.h */

struct nd_nat_call {
    u64 ct;
    u32 flags;
    u16 lo;
    u16 hi;
};

BPF_TABLE("hash", struct nd_snat_key, struct nd_snat_val, nd_snat, ND_MAX_SNAT_ROWS);
BPF_TABLE("lru_hash", u64, struct nd_snat_key, nd_snat_pending, 65536);   /* ct -> row, not confirmed */
BPF_F_TABLE("hash", u64, struct nd_snat_key, nd_snat_live, ND_MAX_SNAT_LIVE, BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", u64, struct nd_nat_call, nd_nat_calls, 16384);      /* thread in nf_nat_setup_info */
BPF_TABLE("lru_hash", u64, u64, nd_confirm_calls, 16384);                 /* thread in __nf_conntrack_confirm -> ct */

static __always_inline const char *nd_ct_tuple(const void *ct, int dir)
{
    return (const char *)ct + ND_OFF_CT_TUPLEHASH + dir * ND_SIZE_CT_TUPLE_HASH + ND_OFF_CTH_TUPLE;
}

static __always_inline u32 nd_netns_of_ct(const void *ct)
{
    void *net = NULL;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)ct + ND_OFF_CT_NET);
    return net ? nd_net_inum(net) : 0;
}

/* The row of ct, from its tuples. Returns 1 when ct is source-NATed (reply dst differs from the
 * original src), 0 when not (k->nat then stays zero). */
static __always_inline int nd_snat_key_of(const void *ct, struct nd_snat_key *k)
{
    const char *o = nd_ct_tuple(ct, ND_CT_DIR_ORIGINAL);
    const char *r = nd_ct_tuple(ct, ND_CT_DIR_REPLY);
    u8 osrc[16] = {}, rdst[16] = {};
    u16 osport = 0, rdport = 0, rsport = 0, l3 = 0;
    u8 proto = 0;
    bpf_probe_read_kernel(&l3, sizeof(l3), o + ND_OFF_CTT_L3NUM);
    bpf_probe_read_kernel(&proto, sizeof(proto), o + ND_OFF_CTT_PROTONUM);
    bpf_probe_read_kernel(osrc, 16, o + ND_OFF_CTT_SRC_U3);
    bpf_probe_read_kernel(&osport, sizeof(osport), o + ND_OFF_CTT_SRC_PORT);
    bpf_probe_read_kernel(rdst, 16, r + ND_OFF_CTT_DST_U3);
    bpf_probe_read_kernel(&rdport, sizeof(rdport), r + ND_OFF_CTT_DST_PORT);
    bpf_probe_read_kernel(k->dst, 16, r + ND_OFF_CTT_SRC_U3);
    bpf_probe_read_kernel(&rsport, sizeof(rsport), r + ND_OFF_CTT_SRC_PORT);
    k->netns = nd_netns_of_ct(ct);
    k->family = l3;
    k->dport = ntohs(rsport);
    k->proto = proto;
    int n = l3 == AF_INET ? 4 : 16, same = rdport == osport;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (i < n && rdst[i] != osrc[i])
            same = 0;
    }
    if (l3 == AF_INET)
        __builtin_memset(k->dst + 4, 0, 12);
    if (same)
        return 0;
    __builtin_memcpy(k->nat, rdst, 16);
    if (l3 == AF_INET)
        __builtin_memset(k->nat + 4, 0, 12);
    return 1;
}

static __always_inline struct nd_snat_val *nd_snat_row(struct nd_snat_key *k)
{
    struct nd_snat_val zero = {};
    return nd_snat.lookup_or_try_init(k, &zero);
}

int nd_kp_nat_setup(struct pt_regs *ctx, void *ct, const struct nd_nat_range2 *range, int maniptype)
{
    if (maniptype != ND_NAT_MANIP_SRC)
        return 0;
    struct nd_nat_call c = {};
    c.ct = (u64)ct;
    if (range) {
        struct nd_nat_range2 r = {};
        bpf_probe_read_kernel(&r, sizeof(r), range);
        c.flags = r.flags;
        if (r.flags & ND_NAT_RANGE_PROTO_SPECIFIED) {
            c.lo = ntohs(r.min_proto);
            c.hi = ntohs(r.max_proto);
        }
    }
    u64 tid = bpf_get_current_pid_tgid();
    nd_nat_calls.update(&tid, &c);
    return 0;
}

int nd_kretp_nat_setup(struct pt_regs *ctx)
{
    u64 tid = bpf_get_current_pid_tgid();
    struct nd_nat_call *cp = nd_nat_calls.lookup(&tid);
    if (!cp)
        return 0;
    struct nd_nat_call c = *cp;
    nd_nat_calls.delete(&tid);
    if ((int)PT_REGS_RC(ctx) != ND_NF_ACCEPT || !c.ct)
        return 0;
    struct nd_snat_key k = {};
    if (!nd_snat_key_of((void *)c.ct, &k))
        return 0;               /* a null binding (no source NAT rule matched) */
    if (!nd_netns_allowed(k.netns))
        return 0;
    struct nd_snat_val *v = nd_snat_row(&k);
    if (!v)
        return 0;
    __sync_fetch_and_add(&v->setups, 1);
    v->range_flags = c.flags;
    v->range_lo = c.lo;
    v->range_hi = c.hi;
    nd_snat_pending.update(&c.ct, &k);
    return 0;
}

int nd_kp_ct_confirm(struct pt_regs *ctx, void *skb)
{
    unsigned long nfct = 0;
    bpf_probe_read_kernel(&nfct, sizeof(nfct), (const char *)skb + ND_OFF_SKB_NFCT);
    u64 ct = nfct & ND_NFCT_PTRMASK;
    if (!ct)
        return 0;
    u64 tid = bpf_get_current_pid_tgid();
    nd_confirm_calls.update(&tid, &ct);
    return 0;
}

int nd_kretp_ct_confirm(struct pt_regs *ctx)
{
    u64 tid = bpf_get_current_pid_tgid();
    u64 *ctp = nd_confirm_calls.lookup(&tid);
    if (!ctp)
        return 0;
    u64 ct = *ctp;
    nd_confirm_calls.delete(&tid);
    int ret = (int)PT_REGS_RC(ctx);
    struct nd_snat_key k = {};
    struct nd_snat_key *pk = nd_snat_pending.lookup(&ct);
    if (pk) {
        k = *pk;
        nd_snat_pending.delete(&ct);
    }
    if (ret == ND_NF_DROP) {
        if (!pk) {              /* not source-NATed by us: count it by destination, nat zero */
            nd_snat_key_of((void *)ct, &k);
            __builtin_memset(k.nat, 0, 16);
            if (!nd_netns_allowed(k.netns))
                return 0;
        }
        struct nd_snat_val *v = nd_snat_row(&k);
        if (v)
            __sync_fetch_and_add(&v->insert_failed, 1);
        return 0;
    }
    if (!pk || ret != ND_NF_ACCEPT)
        return 0;
    unsigned long status = 0;
    bpf_probe_read_kernel(&status, sizeof(status), (const char *)ct + ND_OFF_CT_STATUS);
    if (!(status & ND_IPS_CONFIRMED))
        return 0;               /* a clash resolved by using another entry: this one goes away */
    struct nd_snat_val *v = nd_snat.lookup(&k);
    if (!v)
        return 0;
    if (nd_snat_live.insert(&ct, &k) != 0)
        return 0;               /* already live, or the live table is full */
    __sync_fetch_and_add(&v->allocations, 1);
    __sync_fetch_and_add(&v->in_use, 1);
    return 0;
}

/* nf_ct_delete and nf_conntrack_free: the first one that sees a live ct releases its port. */
int nd_kp_ct_release(struct pt_regs *ctx, void *ctv)
{
    u64 ct = (u64)ctv;
    nd_snat_pending.delete(&ct);
    struct nd_snat_key *kp = nd_snat_live.lookup(&ct);
    if (!kp)
        return 0;
    struct nd_snat_key k = *kp;
    if (nd_snat_live.delete(&ct) != 0)
        return 0;               /* another CPU released it first */
    struct nd_snat_val *v = nd_snat.lookup(&k);
    if (v) {
        __sync_fetch_and_add(&v->in_use, -1);
        __sync_fetch_and_add(&v->releases, 1);
    }
    return 0;
}
