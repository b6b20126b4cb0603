"""The kernel layer: feature probes, the hook planner, compile or load the program image, the one bpf() layer, BTF and tracefs."""
