"""Analysis: decode, aggregate, attribute to domains and pods, diagnose. Pure: no kernel, no sockets."""
