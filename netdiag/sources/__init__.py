"""Sources: what the kernel and the node tell each interval (BPF maps' decoders, inet_diag, conntrack, DNS capture, namespaces and pods)."""
