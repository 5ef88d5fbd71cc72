"""Sparsity masks, pattern checks and the 2:4 / bitmask storage layouts, against hand-worked values."""
from __future__ import annotations

import pytest
import torch

from compressor.numerics.sparsity import (
    bitmask_bytes,
    bitmask_saves_space,
    dense_bytes,
    is_nm_sparse,
    nm_mask,
    pack_24,
    pack_bitmask,
    packed_24_bytes,
    parse_sparsity,
    unpack_24,
    unpack_bitmask,
    unstructured_mask,
    wanda_scores,
)

# One row, two groups of 4: [0, 1, 0, 2 | 0, 0, 0, 3] then [0, 0, 0, 0 | 4, 5, 0, 0].
HAND_ROW = torch.tensor([[0.0, 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 4, 5, 0, 0]])


def test_parse_sparsity():
    assert parse_sparsity("2:4") == (2, 4)
    assert parse_sparsity("1:8") == (1, 8)
    assert parse_sparsity((2, 4)) == (2, 4)
    assert parse_sparsity(0.5) == 0.5
    assert parse_sparsity("0.25") == 0.25


@pytest.mark.parametrize("bad", ["3:2", "0:4", "2:2", "2:4:8", "a:b", "abc", 1.5, 0.0, 1, True, None])
def test_parse_sparsity_rejects(bad):
    with pytest.raises(ValueError, match="sparsity") as info:
        parse_sparsity(bad)
    assert "\n" not in str(info.value)


def test_nm_mask_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, -2.0, 4.0, 3.0, 1.0]])
    # group 1: 0.9 (col 1) and 0.5 (col 2) are highest; group 2: 4.0 (col 5) and 3.0 (col 6).
    expected = torch.tensor([[False, True, True, False, False, True, True, False]])
    assert torch.equal(nm_mask(scores, 2, 4), expected)
    assert torch.equal(nm_mask(scores, 1, 4), torch.tensor([[False, True, False, False, False, True, False, False]]))


def test_nm_mask_ties_keep_lower_columns():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0, 2.0, 2.0, 2.0]])
    expected = torch.tensor([[True, True, False, False, True, True, False, False]])
    assert torch.equal(nm_mask(scores, 2, 4), expected)


def test_nm_mask_needs_multiple_of_m():
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.randn(2, 6), 2, 4)


def test_unstructured_mask_per_row():
    scores = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0], [0.0, 9.0, 8.0, 7.0, 6.0]])
    # round(0.4 * 5) = 2 zeros per row: the two lowest of each row.
    expected = torch.tensor([[True, False, True, False, True], [False, True, True, True, False]])
    assert torch.equal(unstructured_mask(scores, 0.4), expected)
    mask = unstructured_mask(torch.randn(7, 100, generator=torch.Generator().manual_seed(0)), 0.3)
    assert torch.equal(mask.sum(dim=1), torch.full((7,), 70))


def test_wanda_scores():
    w = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    norm = torch.tensor([10.0, 1.0])
    assert torch.equal(wanda_scores(w, norm), torch.tensor([[10.0, 2.0], [30.0, 0.5]]))
    with pytest.raises(ValueError):
        wanda_scores(w, torch.ones(3))


def test_is_nm_sparse_along_axis():
    t = torch.tensor([[1.0, 0, 2, 0], [0, 3, 0, 4]])  # along axis 1: 2 nonzeros per group of 4
    assert is_nm_sparse(t, 2, 4, axis=1)
    assert not is_nm_sparse(t, 1, 4, axis=1)
    assert not is_nm_sparse(t, 2, 4, axis=0)  # axis 0 has length 2: not a multiple of 4
    dense_cols = torch.tensor([[1.0, 1], [1, 1], [0, 0], [0, 0]])  # 2:4 down axis 0, dense along axis 1
    assert is_nm_sparse(dense_cols, 2, 4, axis=0)
    assert is_nm_sparse(dense_cols.reshape(1, 4, 2), 2, 4, axis=-2)
    assert not is_nm_sparse(torch.ones(4, 4), 2, 4, axis=0)


def test_pack_24_by_hand():
    values, positions = pack_24(HAND_ROW)
    # Groups and their stored (p0, p1), code = p0 | p1 << 2:
    #   [0, 1, 0, 2] → (1, 3) → 1 | 12 = 13
    #   [0, 0, 0, 3] → one nonzero (3); the lowest free position, 0, fills in → (0, 3) → 0 | 12 = 12
    #   [0, 0, 0, 0] → (0, 1) → 0 | 4 = 4
    #   [4, 5, 0, 0] → (0, 1) → 4
    # Bytes, even group in the low nibble: 13 | 12 << 4 = 205 and 4 | 4 << 4 = 68.
    assert torch.equal(positions, torch.tensor([[205, 68]], dtype=torch.uint8))
    assert torch.equal(values, torch.tensor([[1.0, 2, 0, 3, 0, 0, 4, 5]]))
    assert torch.equal(unpack_24(values, positions, 16), HAND_ROW)


def test_pack_bitmask_by_hand():
    values, mask = pack_bitmask(HAND_ROW)
    # Nonzero columns 1, 3, 7 → byte 0 bits 1, 3, 7 = 2 + 8 + 128 = 138;
    # columns 12, 13 → byte 1 bits 4, 5 = 16 + 32 = 48.
    assert torch.equal(mask, torch.tensor([[138, 48]], dtype=torch.uint8))
    assert torch.equal(values, torch.tensor([1.0, 2, 3, 4, 5]))
    assert torch.equal(unpack_bitmask(values, mask, (1, 16)), HAND_ROW)


def random_24(rows: int, columns: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        dense = torch.randn(rows, columns, generator=g).to(dtype)
    else:
        low, high = (-128, 128) if dtype == torch.int8 else (0, 256)
        dense = torch.randint(low, high, (rows, columns), generator=g).to(dtype)
    keep = nm_mask(torch.rand(rows, columns, generator=g), 2, 4)
    keep &= torch.rand(rows, columns, generator=g) > 0.2  # some groups with fewer than 2 nonzeros
    return torch.where(keep, dense, torch.zeros((), dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8, torch.uint8])
def test_round_trips(dtype):
    dense = random_24(6, 40, dtype, seed=3)
    assert is_nm_sparse(dense, 2, 4, axis=1)
    values, positions = pack_24(dense)
    assert values.dtype == dtype and values.shape == (6, 20)
    assert positions.dtype == torch.uint8 and positions.shape == (6, 5)
    assert torch.equal(unpack_24(values, positions, 40), dense)

    odd = dense[:, :37]  # the bitmask layout takes any width
    values, mask = pack_bitmask(odd)
    assert values.dtype == dtype and mask.shape == (6, 5)
    assert torch.equal(unpack_bitmask(values, mask, odd.shape), odd)


def test_pack_24_rejects():
    three = torch.zeros(1, 8)
    three[0, :3] = 1.0
    with pytest.raises(ValueError, match="more than 2 nonzeros"):
        pack_24(three)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_24(torch.zeros(1, 12))
    values, positions = pack_24(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="in_features"):
        unpack_24(values, positions, 24)
    with pytest.raises(ValueError, match="corrupt"):
        unpack_24(values, torch.full_like(positions, 0x55), 16)  # code 5 = (1, 1): twice the same position


def test_unpack_bitmask_rejects_a_wrong_count():
    values, mask = pack_bitmask(HAND_ROW)
    with pytest.raises(ValueError, match="5 nonzeros"):
        unpack_bitmask(values[:4], mask, (1, 16))


def test_sizes():
    assert dense_bytes((4, 16), 2) == 128
    assert packed_24_bytes((4, 16), 2) == 32 * 2 + 8  # half the values + 4 bits per group of 4
    assert bitmask_bytes((4, 10), nnz=5, element_size=4) == 20 + 4 * 2  # rows padded to whole bytes
    half = torch.zeros(8, 64)
    half[:, ::2] = 1.0
    assert bitmask_saves_space(half)  # 256·4 + 64 bytes < 512·4
    assert not bitmask_saves_space(torch.ones(8, 64))
    int8 = torch.ones(8, 64, dtype=torch.int8)
    int8[:, ::8] = 0  # 7/8 nonzero: 448 values + 64 mask bytes = 512, no smaller than dense
    assert not bitmask_saves_space(int8)
