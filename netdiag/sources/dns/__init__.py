"""DNS seen in every network namespace: the capture paths (socket calls, cgroup_skb, packet sockets), the wire decoder and the name cache."""
