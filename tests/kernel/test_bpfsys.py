"""The bpf() layer's map dumps on real maps: the batched lookup and the one-key-at-a-time walk
that kernels without a batch lookup for a map type get (arrays before 5.9, for one) return the
same pairs."""
from __future__ import annotations

import struct

import pytest

from netdiag.kernel import bpfsys

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("map_type,percpu", [(bpfsys.BPF_MAP_TYPE_HASH, False),
                                             (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, True)])
def test_batch_and_key_walk_agree(doctor, map_type, percpu):
    fd = bpfsys.map_create(map_type, 4, 8, 257, name="nd_test_walk")
    m = bpfsys.Map(fd)
    try:
        for k in range(0, 257, 3):
            v = struct.pack("<Q", k * 7)
            m.update(struct.pack("<I", k), v * (m.ncpus if percpu else 1) if percpu else v)
        batched = m.items()
        m.batch_ok = False
        walked = m.items()
    finally:
        m.close()
    assert sorted(batched) == sorted(walked)
    got = {struct.unpack("<I", k)[0]: v for k, v in walked}
    want = range(0, 257, 3) if not percpu else range(257)      # an array holds every index
    assert sorted(got) == list(want)
    if not percpu:
        assert all(struct.unpack("<Q", v)[0] == k * 7 for k, v in got.items())
    else:
        assert all(struct.unpack("<Q", v[0])[0] == (k * 7 if k % 3 == 0 else 0) for k, v in got.items())
