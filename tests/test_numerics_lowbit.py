"""compressor.numerics low-bit formats: FP8 E4M3, E8M0, FP4 E2M1, NVFP4, MXFP4, INT4 and WeightFormat.

Expected codes, bytes, scales and values below are worked out by hand from each format's definition.
"""
import math

import pytest
import torch

from compressor.numerics.blocks import from_blocks, to_blocks
from compressor.numerics.formats import make_weight_format
from compressor.numerics.fp4 import (
    decode_e2m1,
    encode_e2m1,
    pack_nibbles,
    round_to_e2m1,
    unpack_nibbles,
)
from compressor.numerics.fp8 import (
    decode_e8m0,
    dequantize_fp8,
    encode_e8m0,
    fake_quantize_fp8,
    quantize_fp8,
    round_to_e4m3,
    to_e4m3,
)
from compressor.numerics.int4 import dequantize_int4, quantize_int4
from compressor.numerics.mxfp4 import (
    dequantize_mxfp4,
    fake_quantize_mxfp4,
    mxfp4_exponents,
    quantize_mxfp4,
)
from compressor.numerics.nvfp4 import (
    dequantize_nvfp4,
    fake_quantize_nvfp4,
    nvfp4_block_scales,
    nvfp4_tensor_scale,
    quantize_nvfp4,
)

S = 2.0**-9  # smallest E4M3 subnormal


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def same(a, b):
    """Bit-for-bit equality of dtype, shape and values (float8 has no torch.equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


# --- FP8 E4M3 ----------------------------------------------------------------------------------

E4M3_CASES = [  # (input, nearest E4M3 with ties to even mantissa, saturating at ±448)
    (1.0625, 1.0), (1.1875, 1.25), (17.0, 16.0), (19.0, 20.0), (-19.0, -20.0),  # ties
    (400.0, 384.0), (432.0, 448.0), (1.1, 1.125), (6.72, 6.5),
    (448.0, 448.0), (460.0, 448.0), (464.0, 448.0), (480.0, 448.0), (1e6, 448.0), (-1e30, -448.0),
    (S, S), (2.0**-10, 0.0), (0.6 * S, S), (1.5 * S, 2 * S), (2.5 * S, 2 * S), (7 * S, 7 * S),  # subnormals
    (7.5 * S, 2.0**-6), (2.0**-6 + 2.0**-10, 2.0**-6), (2.0**-11, 0.0), (0.0, 0.0),
]


@pytest.mark.parametrize("x, expected", E4M3_CASES)
def test_e4m3_rounding_and_saturation(x, expected):
    t = torch.tensor([x])
    assert round_to_e4m3(t).item() == expected
    stored = to_e4m3(t)
    assert stored.dtype == torch.float8_e4m3fn and stored.float().item() == expected


def test_round_to_e4m3_equals_torch_cast_on_random_values():
    mag = 10.0 ** (torch.rand(20_000, generator=gen(1)) * 7 - 4)  # 1e-4 .. 1e3
    x = mag * torch.where(torch.rand(20_000, generator=gen(2)) < 0.5, -1.0, 1.0)
    ref = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(round_to_e4m3(x), ref)
    assert torch.isfinite(to_e4m3(x).float()).all()


def test_round_to_e4m3_equals_torch_cast_on_every_tie():
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    mid = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([grid, mid, -grid, -mid])
    assert torch.equal(round_to_e4m3(x), x.to(torch.float8_e4m3fn).float())


def test_quantize_fp8_per_tensor_hand_worked():
    # amax 28 → scale 28/448 = 1/16; x/scale = 16x = [448, -224, 17, 19, 432, 2^-10, 3·2^-10]
    x = torch.tensor([28.0, -14.0, 1.0625, 1.1875, 27.0, 2.0**-14, 3 * 2.0**-14])
    q, scale = quantize_fp8(x)
    assert scale.item() == 1 / 16 and scale.dim() == 0
    assert q.dtype == torch.float8_e4m3fn
    assert q.float().tolist() == [448.0, -224.0, 16.0, 20.0, 448.0, 0.0, 2 * S]
    assert dequantize_fp8(q, scale).tolist() == [28.0, -14.0, 1.0, 1.25, 28.0, 0.0, 2.0**-12]


def test_quantize_fp8_per_channel_hand_worked():
    x = torch.tensor([[28.0, -14.0, 1.0625, 0.0], [448.0, 17.0, -19.0, 0.001], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_fp8(x, axis=0)
    assert scale.tolist() == [1 / 16, 1.0, 1.0]  # the all-zero row gets scale 1
    assert q.float().tolist() == [[448.0, -224.0, 16.0, 0.0], [448.0, 16.0, -20.0, S], [0.0] * 4]
    deq = dequantize_fp8(q, scale, axis=0)
    assert deq.tolist() == [[28.0, -14.0, 1.0, 0.0], [448.0, 16.0, -20.0, S], [0.0] * 4]
    # axis=1 (and -1): one scale per column
    q1, s1 = quantize_fp8(x, axis=1)
    assert s1.tolist() == pytest.approx([1.0, 17.0 / 448, 19.0 / 448, 0.001 / 448], rel=1e-6)
    assert torch.equal(quantize_fp8(x, axis=-1)[1], s1)
    assert q1.float()[:, 0].tolist() == [28.0, 448.0, 0.0]


def test_quantize_fp8_far_beyond_max_stays_finite():
    x = torch.tensor([1e30, -1e30, 1.0, 0.0])
    q, scale = quantize_fp8(x)
    assert q.float().tolist() == [448.0, -448.0, 0.0, 0.0]
    assert torch.isfinite(dequantize_fp8(q, scale)).all()
    assert fake_quantize_fp8(torch.tensor([1e6, -1e6, 3.0]), torch.tensor(0.5)).tolist() == [224.0, -224.0, 3.0]


# --- E8M0 ----------------------------------------------------------------------------------------


def test_e8m0_encode_decode():
    codes = encode_e8m0(torch.tensor([-127.0, -1.0, 0.0, 1.0, 127.0, 200.0, -300.0]))
    assert codes.dtype == torch.uint8 and codes.tolist() == [0, 126, 127, 128, 254, 254, 0]
    assert decode_e8m0(torch.tensor([0, 126, 127, 128, 254], dtype=torch.uint8)).tolist() == [
        2.0**-127, 0.5, 1.0, 2.0, 2.0**127]
    with pytest.raises(ValueError, match="NaN"):
        decode_e8m0(torch.tensor([127, 255], dtype=torch.uint8))


# --- FP4 E2M1 and nibble packing ---------------------------------------------------------------

E2M1_CASES = [  # (input, value, code)
    (0.25, 0.0, 0), (0.75, 1.0, 2), (1.25, 1.0, 2), (1.75, 2.0, 4), (2.5, 2.0, 4), (3.5, 4.0, 6),
    (5.0, 4.0, 6), (0.5, 0.5, 1), (0.3, 0.5, 1), (1.5, 1.5, 3), (3.0, 3.0, 5), (5.5, 6.0, 7),
    (6.0, 6.0, 7), (7.0, 6.0, 7), (1e30, 6.0, 7), (-0.5, -0.5, 9), (-2.5, -2.0, 12), (-6.0, -6.0, 15),
    (-1e30, -6.0, 15), (-0.2, 0.0, 8), (0.0, 0.0, 0), (-0.0, 0.0, 8),
]


@pytest.mark.parametrize("x, value, code", E2M1_CASES)
def test_e2m1_round_encode_decode(x, value, code):
    t = torch.tensor([x])
    assert round_to_e2m1(t).item() == value
    c = encode_e2m1(t)
    assert c.dtype == torch.uint8 and c.item() == code
    assert decode_e2m1(c).item() == value


def test_e2m1_negative_zero_code_decodes_to_zero():
    c = encode_e2m1(torch.tensor([-0.0, 0.0]))
    assert c.tolist() == [8, 0]
    assert decode_e2m1(c).tolist() == [0.0, 0.0]
    assert decode_e2m1(torch.arange(16)).tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6]


def _e2m1_reference(x):
    """Nearest of the 8 magnitudes; at a tie the one with even mantissa bit (code & 1 == 0)."""
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    code = min(range(8), key=lambda k: (abs(abs(x) - grid[k]), k & 1))
    return math.copysign(grid[code], x), code + (8 if x < 0 else 0)


def test_round_to_e2m1_matches_ties_to_even_reference_on_eighths():
    x = torch.arange(-56, 57) / 8.0  # every multiple of 0.125 in [-7, 7]
    ref = [_e2m1_reference(v) for v in x.tolist()]
    assert round_to_e2m1(x).tolist() == [v for v, _ in ref]
    assert encode_e2m1(x).tolist() == [c for _, c in ref]


def test_pack_nibbles_hand_worked():
    assert pack_nibbles(torch.tensor([1, 2])).tolist() == [0x21]
    packed = pack_nibbles(torch.tensor([[0xF, 0x0, 0x3, 0xA], [0x8, 0x7, 0x0, 0x0]]))
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x0F, 0xA3], [0x78, 0x00]]
    assert unpack_nibbles(torch.tensor([0x21, 0xF0], dtype=torch.uint8)).tolist() == [1, 2, 0, 15]


def test_pack_nibbles_rejects_odd_count_and_round_trips():
    with pytest.raises(ValueError, match="odd"):
        pack_nibbles(torch.zeros(2, 5, dtype=torch.uint8))
    codes = torch.randint(0, 16, (3, 4, 10), generator=gen(3), dtype=torch.uint8)
    assert pack_nibbles(codes).shape == (3, 4, 5)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_blocks_reshape():
    x = torch.arange(12.0).reshape(2, 6)
    assert to_blocks(x, 3).shape == (2, 2, 3) and torch.equal(from_blocks(to_blocks(x, 3)), x)
    with pytest.raises(ValueError, match="multiple"):
        to_blocks(x, 4)


# --- NVFP4 ---------------------------------------------------------------------------------------

# Block 1 of the hand-worked tensor: tensor amax 672 → tensor scale 672/2688 = 0.25; block amax 1.75 →
# 1.75/6/0.25 = 1.1667 → E4M3 1.125, so each element is divided by 1.125·0.25 = 0.28125 (= 9/32).
NV_BLOCK1 = [6.222, -6.222, 0.5, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -3.0, 1.5, -0.0, 0.0, -1.0, 4.0]  # x/0.28125
NV_CODES1 = [7, 15, 1, 0, 2, 2, 4, 4, 6, 6, 13, 3, 8, 0, 10, 6]
NV_BYTES1 = [0xF7, 0x01, 0x22, 0x44, 0x66, 0x3D, 0x08, 0x6A]
NV_DEQ1 = [6.0, -6.0, 0.5, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -3.0, 1.5, 0.0, 0.0, -1.0, 4.0]  # times 0.28125


def test_nvfp4_hand_worked_two_blocks():
    block1 = [1.75, -1.75] + [v * 0.28125 for v in NV_BLOCK1[2:]]
    w = torch.tensor([[672.0] + [0.0] * 15 + block1])
    t = quantize_nvfp4(w)
    assert t["tensor_scale"].item() == 0.25 and t["tensor_scale"].shape == ()
    assert t["block_scale"].dtype == torch.float8_e4m3fn
    assert t["block_scale"].float().tolist() == [[448.0, 1.125]]  # block 0 holds the tensor max
    assert t["packed"].tolist() == [[0x07] + [0x00] * 7 + NV_BYTES1]
    assert unpack_nibbles(t["packed"])[0, 16:].tolist() == NV_CODES1
    deq = dequantize_nvfp4(t["packed"], t["block_scale"], t["tensor_scale"])
    assert deq.tolist() == [[672.0] + [0.0] * 15 + [v * 0.28125 for v in NV_DEQ1]]
    # 1.75 saturates to 6·0.28125 = 1.6875 because its block scale rounded down
    assert deq[0, 16].item() == 1.6875


def test_nvfp4_tensor_scale():
    assert nvfp4_tensor_scale(2688.0).item() == 1.0
    assert nvfp4_tensor_scale(torch.tensor(672.0)).item() == 0.25
    assert nvfp4_tensor_scale(0.0).item() == 1.0


def test_nvfp4_block_scale_clamp_and_subnormal():
    ts = torch.tensor(0.25)
    w = torch.zeros(1, 64)
    w[0, 0] = 4.5 * S  # 4.5·2^-9 / 6 / 0.25 = 3·2^-9: an E4M3 subnormal block scale
    w[0, 16] = 1e-7  # far below: clamped up to 2^-9
    w[0, 48] = 1e6  # above: clamped to 448 (a static tensor scale smaller than amax / 2688)
    bs = nvfp4_block_scales(w, ts)
    assert bs.float().tolist() == [[3 * S, S, S, 448.0]]  # block 2 is all zero: 2^-9, finite
    t = quantize_nvfp4(w, tensor_scale=ts)
    codes = unpack_nibbles(t["packed"])[0]
    assert codes[[0, 16, 48]].tolist() == [7, 0, 7]  # 4.5·2^-9 / (3·2^-9·0.25) = 6; 1e6 saturates
    deq = dequantize_nvfp4(t["packed"], t["block_scale"], t["tensor_scale"])
    assert deq[0, 0].item() == 4.5 * S and deq[0, 48].item() == 6 * 448 * 0.25
    assert torch.isfinite(deq).all()


def test_nvfp4_all_zero_tensor():
    t = quantize_nvfp4(torch.zeros(2, 32))
    assert t["tensor_scale"].item() == 1.0
    assert t["block_scale"].float().eq(S).all() and t["packed"].eq(0).all()
    deq = dequantize_nvfp4(t["packed"], t["block_scale"], t["tensor_scale"])
    assert deq.eq(0).all() and not deq.isnan().any()
    assert fake_quantize_nvfp4(torch.zeros(2, 32), torch.tensor(1.0)).eq(0).all()


def _nvfp4_grid_tensor(tensor_scale, seed):
    """[8, 64] whose blocks are E2M1 values (each with a ±6) times an E4M3 block scale times ``tensor_scale``."""
    g = gen(seed)
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    v = grid[torch.randint(0, 8, (8, 4, 16), generator=g)] * torch.where(torch.rand(8, 4, 16, generator=g) < .5, -1, 1)
    v[..., 3] = 6.0
    bs = torch.randint(1, 127, (8, 4), generator=g, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    bs[0, 0] = 448.0  # so the tensor amax gives back ``tensor_scale``
    return from_blocks(v * (bs * tensor_scale).unsqueeze(-1))


@pytest.mark.parametrize("tensor_scale, pass_scale", [(2.0**-8, False), (0.0123, True)])
def test_nvfp4_on_grid_round_trip_is_exact(tensor_scale, pass_scale):
    ts = torch.tensor(tensor_scale)
    w = _nvfp4_grid_tensor(ts, seed=4)
    t = quantize_nvfp4(w, tensor_scale=ts if pass_scale else None)
    assert t["tensor_scale"].item() == ts.item()
    assert torch.equal(dequantize_nvfp4(t["packed"], t["block_scale"], t["tensor_scale"]), w)


def test_nvfp4_storage_sizes():
    w = torch.randn(384, 384, generator=gen(5))
    t = quantize_nvfp4(w)
    assert t["packed"].shape == (384, 192) and t["packed"].dtype == torch.uint8
    assert t["block_scale"].shape == (384, 24) and t["block_scale"].dtype == torch.float8_e4m3fn
    assert t["tensor_scale"].dtype == torch.float32
    stored = sum(v.numel() * v.element_size() for v in t.values())
    assert stored == 384 * 192 + 384 * 24 + 4
    assert stored <= 0.16 * w.numel() * 4


@pytest.mark.parametrize("ts_factor", [1.0, 0.25])  # 0.25: a static tensor scale that clamps block scales
def test_fake_quantize_nvfp4_equals_quantize_dequantize(ts_factor):
    x = torch.randn(16, 128, generator=gen(6)) * 10.0 ** torch.randint(-3, 3, (16, 1), generator=gen(7))
    x[3, 32:48] = 0.0
    ts = nvfp4_tensor_scale(x.abs().amax()) * ts_factor
    t = quantize_nvfp4(x, tensor_scale=ts)
    assert torch.equal(fake_quantize_nvfp4(x, ts), dequantize_nvfp4(t["packed"], t["block_scale"], t["tensor_scale"]))


# --- MXFP4 ---------------------------------------------------------------------------------------


def test_mxfp4_exponents():
    amax = torch.tensor([4.0, 7.999, 8.0, 7.0, 0.4375, 1000.0, 0.0, 2.0**-130])
    w = torch.zeros(8, 32)
    w[:, 5] = -amax
    assert mxfp4_exponents(w)[:, 0].tolist() == [0, 0, 1, 0, -4, 7, -127, -127]


def test_mxfp4_hand_worked_blocks():
    # block 0: amax 0.4375 → floor(log2) = -2 → exponent -4 → code 123, scale 1/16; elements are x·16:
    #   7→6 (saturates), -4, 0.5, 0.25→0, 0.75→1, 2.5→2, 3.5→4, 5→4, 5.5→6
    b0 = torch.tensor([7.0, -4.0, 0.5, 0.25, 0.75, 2.5, 3.5, 5.0, 5.5] + [0.0] * 23) / 16
    b1 = torch.zeros(32)  # all zero → code 0
    b2 = torch.tensor([7.0, -7.0, 6.0, 1.0] + [0.0] * 28)  # max 7 → exponent 0 → code 127, 7 → 6
    b3 = torch.tensor([1000.0, 100.0] + [0.0] * 30)  # floor(log2 1000) = 9 → exponent 7 → scale 128
    t = quantize_mxfp4(torch.stack([b0, b1, b2, b3]).reshape(2, 64))
    assert t["scale"].dtype == torch.uint8 and t["scale"].tolist() == [[123, 0], [127, 134]]
    assert t["packed"].shape == (2, 32)
    assert t["packed"][0, :5].tolist() == [0xE7, 0x01, 0x42, 0x66, 0x07]
    assert t["packed"][1, :2].tolist() == [0xF7, 0x27] and t["packed"][1, 16].item() == 0x27
    deq = dequantize_mxfp4(t["packed"], t["scale"]).reshape(4, 32)
    assert deq[0, :9].tolist() == [v / 16 for v in [6.0, -4.0, 0.5, 0.0, 1.0, 2.0, 4.0, 4.0, 6.0]]
    assert deq[1].eq(0).all() and not deq.isnan().any()
    assert deq[2, :4].tolist() == [6.0, -6.0, 6.0, 1.0]  # 7 saturates to 6·scale
    assert deq[3, :2].tolist() == [768.0, 128.0]  # 1000/128 = 7.8 → 6; 100/128 = 0.78 → 1


def test_mxfp4_storage_and_fake_quantize():
    x = torch.randn(8, 128, generator=gen(8)) * 10.0 ** torch.randint(-4, 4, (8, 1), generator=gen(9))
    x[2, :32] = 0.0
    t = quantize_mxfp4(x)
    assert t["packed"].shape == (8, 64) and t["scale"].shape == (8, 4)
    assert torch.equal(fake_quantize_mxfp4(x), dequantize_mxfp4(t["packed"], t["scale"]))


# --- INT4 ----------------------------------------------------------------------------------------


def test_int4_symmetric_hand_worked():
    # amax 3.5 → scale 0.5; w/0.5 = [7, -7, .5→0, 1.5→2, -2.4→-2, 0, 2, -.5→0]; stored q + 8
    w = torch.tensor([[3.5, -3.5, 0.25, 0.75, -1.2, 0.0, 1.0, -0.25], [0.0] * 8])
    t = quantize_int4(w, group_size=8)
    assert t["scale"].tolist() == [[0.5], [1.0]] and t["zero"].tolist() == [[8], [8]]
    assert unpack_nibbles(t["packed"])[0].tolist() == [15, 1, 8, 10, 6, 8, 10, 8]
    assert t["packed"].tolist() == [[0x1F, 0xA8, 0x86, 0x8A], [0x88] * 4]
    deq = dequantize_int4(t["packed"], t["scale"], t["zero"])
    assert deq.tolist() == [[3.5, -3.5, 0.0, 1.0, -1.0, 0.0, 1.0, 0.0], [0.0] * 8]


def test_int4_asymmetric_hand_worked():
    # row 0: range [-1.25, 2.5] → scale 3.75/15 = 0.25, zero round(1.25/0.25) = 5
    # row 1: range [-0.5625, 3.1875] → scale 0.25, zero round(2.25) = 2, so -0.5625 comes back as -0.5
    # row 2: range [-0.6875, 3.0625] → scale 0.25, zero round(2.75) = 3; both ends move by 0.0625
    w = torch.tensor([[-1.25, 0.0, 2.5, 0.3, -0.6, 1.0, 0.125, 0.375],
                      [-0.5625, 3.1875, 0.0, 1.0, -0.3, 0.4, 2.0, -0.125],
                      [-0.6875, 3.0625, 0.0, 1.0, -0.3, 0.4, 2.0, -0.125], [1.5] * 8, [0.0] * 8])
    t = quantize_int4(w, group_size=8, symmetric=False)
    assert t["scale"][:, 0].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.1, 1.0], rel=1e-6)
    assert t["scale"][:3, 0].tolist() == [0.25] * 3 and t["zero"].tolist() == [[5], [2], [3], [0], [0]]
    assert unpack_nibbles(t["packed"]).tolist() == [
        [0, 5, 15, 6, 3, 9, 5, 7], [0, 15, 2, 6, 1, 4, 10, 2], [0, 15, 3, 7, 2, 5, 11, 3], [15] * 8, [0] * 8]
    deq = dequantize_int4(t["packed"], t["scale"], t["zero"])
    assert deq[0].tolist() == [-1.25, 0.0, 2.5, 0.25, -0.5, 1.0, 0.0, 0.5]
    assert deq[1].tolist() == [-0.5, 3.25, 0.0, 1.0, -0.25, 0.5, 2.0, 0.0]
    assert deq[2].tolist() == [-0.75, 3.0, 0.0, 1.0, -0.25, 0.5, 2.0, 0.0]
    assert deq[3].tolist() == pytest.approx([1.5] * 8) and deq[4].eq(0).all()


def test_int4_storage_and_group_layout():
    w = torch.randn(4, 256, generator=gen(10))
    t = quantize_int4(w, group_size=64)
    assert t["packed"].shape == (4, 128) and t["scale"].shape == (4, 4) and t["zero"].shape == (4, 4)
    assert torch.allclose(t["scale"], to_blocks(w, 64).abs().amax(dim=-1) / 7)
    err = (dequantize_int4(t["packed"], t["scale"], t["zero"]) - w).abs()
    assert (to_blocks(err, 64) <= t["scale"].unsqueeze(-1) / 2 * (1 + 1e-5)).all()


# --- non-finite input ---------------------------------------------------------------------------

QUANTIZERS = {
    "to_e4m3": to_e4m3,
    "fp8_tensor": quantize_fp8,
    "fp8_channel": lambda w: quantize_fp8(w, axis=0),
    "e2m1": encode_e2m1,
    "nvfp4": quantize_nvfp4,
    "mxfp4": quantize_mxfp4,
    "int4_sym": lambda w: quantize_int4(w, 32),
    "int4_asym": lambda w: quantize_int4(w, 32, symmetric=False),
    **{f"format_{n}": make_weight_format(n, 32).quantize for n in ["int8", "fp8", "int4", "nvfp4", "mxfp4"]},
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(name, bad):
    w = torch.randn(2, 64, generator=gen(11))
    w[1, 40] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        QUANTIZERS[name](w)


# --- WeightFormat --------------------------------------------------------------------------------

FORMATS = [("int8", {}), ("fp8", {}), ("int4", {}), ("int4", {"group_size": 32}),
           ("int4", {"group_size": 32, "symmetric": False}), ("nvfp4", {}), ("mxfp4", {})]


@pytest.mark.parametrize("name, kwargs", FORMATS)
def test_group_by_group_scales_reproduce_direct_quantize(name, kwargs):
    fmt = make_weight_format(name, **kwargs)
    w = torch.randn(8, 256, generator=gen(12)) * 10.0 ** torch.randint(-2, 3, (8, 1), generator=gen(13))
    w[2, :128] = 0.0  # zero groups
    w[5] = 0.0  # a zero row
    shared = fmt.shared_scales(w)
    g = fmt.group_size or w.shape[1]
    groups, fake = [], []
    for start in range(0, w.shape[1], g):
        s = fmt.group_scales(w[:, start:start + g], shared)
        assert all(v.shape == (8, 1) for v in s.values())
        groups.append(s)
        fake.append(fmt.fake_quantize(w[:, start:start + g], {**s, **shared}))
    scales = {k: torch.cat([s[k] for s in groups], dim=1) for k in groups[0]} | shared
    direct, grouped = fmt.quantize(w), fmt.quantize(w, scales)
    assert direct.keys() == grouped.keys()
    for k in direct:
        assert same(direct[k], grouped[k]), k
    deq = fmt.dequantize(direct)
    assert torch.equal(torch.cat(fake, dim=1), deq)
    assert torch.isfinite(deq).all() and deq[5].eq(0).all()


@pytest.mark.parametrize("name, kwargs, in_features, bits", [
    ("nvfp4", {}, 384, 4.5), ("mxfp4", {}, 384, 4.25), ("int4", {}, 384, 4.25),
    ("int4", {"symmetric": False}, 384, 4.3125), ("int4", {"group_size": 32}, 384, 5.0),
    ("int8", {}, 384, 8 + 32 / 384), ("int8", {}, 64, 8.5), ("fp8", {}, 128, 8.25),
])
def test_bits_per_weight(name, kwargs, in_features, bits):
    assert make_weight_format(name, **kwargs).bits_per_weight(in_features) == bits


def test_make_weight_format_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown weight format"):
        make_weight_format("int5")
