/* The DNS capture's records (bpf/dns.c), as userspace reads them from the rings.
 * netdiag/sources/dns/cgcapture.py (REC_HDR: struct nd_dns_hdr, the ND_DNS_EGRESS/INGRESS
 * directions) and netdiag/sources/dns/sockcapture.py (SK_HDR: struct nd_dns_sk, ND_DNS_SEND/RECV,
 * ND_DNS_PEER_GUESSED) mirror them; tests/unit/test_header_contract.py checks every offset, size
 * and value. Widest fields first, explicit padding. */
#ifndef ND_DNS_H
#define ND_DNS_H

#ifndef ND_DNS_SNAP
#define ND_DNS_SNAP 2048
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

/* the socket path's records (-DND_DNS_SOCK): the header, then struct nd_dns_sk, then the payload */
#define ND_DNS_SEND 3
#define ND_DNS_RECV 4
#define ND_DNS_PEER_GUESSED 1

struct nd_dns_sk {
    u8 family;          /* AF_INET / AF_INET6 */
    u8 proto;           /* 17 / 6 */
    u16 lport;          /* host order */
    u16 rport;          /* host order */
    u8 flags;           /* ND_DNS_PEER_GUESSED */
    u8 pad;
    u8 laddr[16];
    u8 raddr[16];
    u32 tgid;           /* the process that sent or read it (the calling task's) */
    u32 pad2;
};

#endif
