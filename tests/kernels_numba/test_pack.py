"""kernels_numba.pack against a numpy bit-stream reference, layouts and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernels_numba as kn


def ref_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit stream per row: code i takes bits [i*bits, (i+1)*bits)."""
    c2 = np.atleast_2d(codes)
    stream = ((c2[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(c2.shape[0], -1)
    out = np.packbits(stream, axis=-1, bitorder="little")
    return out[0] if codes.ndim == 1 else out


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (33,), (3, 5), (4, 64), (2, 1001)])
def test_pack_equals_reference_and_round_trips(bits, shape):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, shape, dtype=np.uint8)
    packed = kn.pack(codes, bits)
    n = shape[-1]
    assert packed.shape == shape[:-1] + (kn.packed_nbytes(n, bits),)
    assert packed.shape[-1] == -(-n * bits // 8)
    np.testing.assert_array_equal(packed, ref_pack(codes, bits))
    np.testing.assert_array_equal(kn.unpack(packed, bits, n), codes)


def test_layouts():
    # INT4: two per byte, low nibble first
    np.testing.assert_array_equal(kn.pack(np.array([1, 2, 15], np.uint8), 4), [0x21, 0x0F])
    # INT2: four per byte, lowest bits first
    np.testing.assert_array_equal(kn.pack(np.array([1, 2, 3, 0, 3], np.uint8), 2), [0b00111001, 3])
    # INT3: 8 codes in 3 bytes
    codes = np.arange(8, dtype=np.uint8)
    packed = kn.pack(codes, 3)
    assert packed.shape == (3,)
    word = int(packed[0]) | int(packed[1]) << 8 | int(packed[2]) << 16
    assert [(word >> (3 * i)) & 7 for i in range(8)] == list(range(8))
    # INT8: identity
    np.testing.assert_array_equal(kn.pack(codes, 8), codes)


def test_pack_does_not_touch_input():
    codes = np.arange(16, dtype=np.uint8).reshape(2, 8)
    c0 = codes.copy()
    kn.pack(codes[:, ::2], 4)  # non-contiguous view is fine
    np.testing.assert_array_equal(codes, c0)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8).flatmap(lambda b: st.tuples(
    st.just(b), hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40),
                           elements=st.integers(0, 2**b - 1)))))
def test_round_trip_property(data):
    bits, codes = data
    np.testing.assert_array_equal(kn.unpack(kn.pack(codes, bits), bits, codes.shape[-1]), codes)


def test_bad_input():
    with pytest.raises(ValueError, match=r"codes has value 16 .* does not fit in 4 bits: expected values 0..15"):
        kn.pack(np.array([1, 16], np.uint8), 4)
    with pytest.raises(ValueError, match="bits=1 is out of range"):
        kn.pack(np.array([1], np.uint8), 1)
    with pytest.raises(ValueError, match="bits=9 is out of range"):
        kn.unpack(np.array([1], np.uint8), 9, 1)
    with pytest.raises(TypeError, match=r"codes has dtype int64, expected uint8"):
        kn.pack(np.array([1, 2]), 4)
    with pytest.raises(ValueError, match=r"codes must be 1-D or 2-D"):
        kn.pack(np.zeros((2, 2, 2), np.uint8), 4)
    with pytest.raises(ValueError, match=r"packed rows have 2 bytes, but 5 codes of 4 bits take ceil\(5\*4/8\) = 3 bytes"):
        kn.unpack(np.zeros(2, np.uint8), 4, 5)
