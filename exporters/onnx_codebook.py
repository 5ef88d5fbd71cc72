"""Decode packed weight codes inside an ONNX graph with standard operators.

Both targets must run the decode: ONNX Runtime's CPU provider at opset 17 and TensorRT at opset 23.
TensorRT has no BitShift or BitwiseAnd, so bit fields are cut out with float arithmetic, which is
exact here: every intermediate is an integer below 2^24 and every scaling is by a power of two.

Packed indices (``compressor.numerics.vq.pack_indices``; FP4 nibbles are the case bits = 4): each row
is a run of chunks of L bytes holding M indices of ``bits`` bits, index m in bits [m·bits, (m+1)·bits)
of the chunk read little-endian. ``unpack_codes`` emits, per layer:

    Cast(uint8 → float) → Reshape [rows, chunks, L]
    → Gather(axis 2, byte offsets [M, span])      the bytes index m touches; this and the next step
                                                  only when L > 1 (else one byte: broadcasting)
    → Mul([1, 256, 65536][:span]) → ReduceSum     word: those bytes as one little-endian integer
    → Mul(2^-s [M]) → Floor                       drop the s = m·bits mod 8 bits below the index
    → x - 2^bits · Floor(x · 2^-bits)             drop the bits above it (a mod, when any are left)
    → Reshape [rows, chunks·M] → Slice [:, :count]   the padding of each row's last chunk

The only tables are of size M (a chunk), not of the number of indices. ``lookup`` then maps codes
to floats with Gather on a small table (E2M1, E4M3, E8M0, or a VQ codebook).

Helpers take the lowering object of ``exporters.onnx_lowbit`` (anything with ``node``, ``array``,
``init`` and the set ``names`` of initializers already in the graph).
"""
from __future__ import annotations

import torch
from onnx import TensorProto

from compressor.numerics.fp4 import E2M1_VALUES
from compressor.numerics.fp8 import E8M0_BIAS
from compressor.numerics.vq import chunk_layout

MAX_WORD_BYTES = 3  # an index of up to 16 bits starting anywhere in a byte spans at most 3 bytes
TABLE_PREFIX = "decode_tables."  # shared constant tables, one copy per graph


# --- code tables -------------------------------------------------------------------------------


def e2m1_table() -> torch.Tensor:
    """Float value of each 4-bit E2M1 code: magnitudes for codes 0-7, the same negated (bit 3 set) for 8-15."""
    return torch.cat([E2M1_VALUES, -E2M1_VALUES]).float()


def e4m3_table() -> torch.Tensor:
    """Float value of each E4M3 byte (0x7F and 0xFF are NaN), as torch's float8_e4m3fn decodes it."""
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()


def e8m0_table() -> torch.Tensor:
    """2^(k - 127) for each E8M0 byte k; 255 is NaN. 2^-127 is a float32 subnormal, still exact."""
    exponents = torch.arange(256, dtype=torch.float64) - E8M0_BIAS
    values = torch.pow(2.0, exponents).float()
    values[255] = float("nan")
    return values


def shared_table(low, name: str, value: torch.Tensor) -> str:
    """An initializer that every layer can read: written once per graph."""
    name = TABLE_PREFIX + name
    if name not in low.names:
        low.array(name, value)
    return name


def lookup(low, table: str, codes: str, out: str) -> str:
    """Gather the float entries of ``table`` (a graph tensor, [n] or [n, d]) at int64 ``codes``."""
    return low.node("Gather", [table, codes], out, axis=0)


def to_float(low, x: str, out: str) -> str:
    return low.node("Cast", [x], out, to=TensorProto.FLOAT)


def to_index(low, x: str, out: str) -> str:
    return low.node("Cast", [x], out, to=TensorProto.INT64)


# --- bit fields --------------------------------------------------------------------------------


def field_layout(bits: int) -> tuple[int, int, list[int], list[int], int]:
    """(L bytes, M indices per chunk, first byte of each index, its bit offset in that byte, bytes
    spanned by the widest index)."""
    length, per_chunk = chunk_layout(bits)
    starts = [m * bits // 8 for m in range(per_chunk)]
    shifts = [m * bits % 8 for m in range(per_chunk)]
    span = max(-(-(s + bits) // 8) for s in shifts)
    if span > MAX_WORD_BYTES:
        raise ValueError(f"{bits}-bit codes span more than {MAX_WORD_BYTES} bytes")
    return length, per_chunk, starts, shifts, span


def _byte_offsets(starts: list[int], span: int, length: int) -> torch.Tensor:
    """[M, span] byte positions; those past the chunk's end repeat its last byte. That byte only lands
    in bits above the index (the index ends inside the chunk), which the mod removes."""
    offsets = torch.tensor(starts)[:, None] + torch.arange(span)
    return offsets.clamp(max=length - 1)


def _chunk_words(low, prefix: str, chunks: str, bits: int) -> str:
    """[rows, C, L] float bytes → [rows, C, M] words (or [rows, C, 1] when one byte is one word)."""
    length, _, starts, _, span = field_layout(bits)
    if length == 1:  # every index of the chunk reads the chunk's single byte: broadcasting does it
        return chunks
    # (With L > 1, bits does not divide 8, so some index straddles two bytes: span >= 2.)
    offsets = shared_table(low, f"offsets_{bits}bit", _byte_offsets(starts, span, length))
    picked = low.node("Gather", [chunks, offsets], f"{prefix}_bytes", axis=2)
    place = shared_table(low, f"byte_weights_{span}", torch.tensor([256.0**j for j in range(span)]))
    weighted = low.node("Mul", [picked, place], f"{prefix}_weighted_bytes")
    last_axis = shared_table(low, "axis_last", torch.tensor([-1]))
    return low.node("ReduceSum", [weighted, last_axis], f"{prefix}_words", keepdims=0)


def _field(low, prefix: str, words: str, bits: int) -> str:
    """floor(word / 2^s) mod 2^bits for each index m of the chunk, in float."""
    _, _, _, shifts, span = field_layout(bits)
    x = words
    if any(shifts):
        inverse = shared_table(low, f"shifts_{bits}bit", torch.tensor([2.0**-s for s in shifts]))
        x = low.node("Floor", [low.node("Mul", [x, inverse], f"{prefix}_scaled")], f"{prefix}_shifted")
    if any(s + bits < 8 * span for s in shifts):  # some index has bits above it in its word
        down = shared_table(low, f"inverse_modulus_{bits}bit", torch.tensor(2.0**-bits))
        up = shared_table(low, f"modulus_{bits}bit", torch.tensor(2.0**bits))
        high = low.node("Floor", [low.node("Mul", [x, down], f"{prefix}_high_scaled")], f"{prefix}_high")
        x = low.node("Sub", [x, low.node("Mul", [high, up], f"{prefix}_high_bits")], f"{prefix}_fields")
    return x


def unpack_codes(low, prefix: str, packed: str, rows: int, row_bytes: int, bits: int, count: int) -> str:
    """Float codes [rows, count] from ``packed`` (uint8 [rows, row_bytes], ``pack_indices`` layout).

    Returns the name of the float tensor; ``to_index`` makes it Gather-ready.
    """
    length, per_chunk, *_ = field_layout(bits)
    chunk_count = row_bytes // length
    if chunk_count * length != row_bytes or chunk_count * per_chunk < count:
        raise ValueError(f"{row_bytes} bytes per row do not hold {count} {bits}-bit codes in whole chunks")
    chunks = low.node("Reshape", [to_float(low, packed, f"{prefix}_float_bytes"),
                                  low.array(f"{prefix}_chunk_shape", torch.tensor([rows, chunk_count, length]))],
                      f"{prefix}_chunks")
    fields = _field(low, prefix, _chunk_words(low, prefix, chunks, bits), bits)
    padded = chunk_count * per_chunk > count  # the last chunk of each row ends in zero indices
    flat = low.array(f"{prefix}_row_shape", torch.tensor([rows, chunk_count * per_chunk]))
    codes = low.node("Reshape", [fields, flat], f"{prefix}_padded" if padded else prefix)
    if not padded:
        return codes
    starts, ends, axes = (shared_table(low, "zero_1d", torch.tensor([0])),
                          low.array(f"{prefix}_count", torch.tensor([count])),
                          shared_table(low, "axis_1", torch.tensor([1])))
    return low.node("Slice", [codes, starts, ends, axes], prefix)


# --- scales ------------------------------------------------------------------------------------


def per_row(low, x: str, out: str) -> str:
    """[rows] → [rows, 1], so a scale multiplies its whole row."""
    return low.node("Unsqueeze", [x, shared_table(low, "axis_1", torch.tensor([1]))], out)


def blockwise(low, prefix: str, values: str, scales: str, rows: int, columns: int, block: int, op: str = "Mul") -> str:
    """values [rows, columns] · scales [rows, columns/block], each scale over ``block`` consecutive columns
    (``op`` Sub: minus a per-block zero point instead)."""
    by_block = low.node("Reshape", [values, low.array(f"{prefix}_block_shape", torch.tensor([rows, columns // block, block]))],
                        f"{prefix}_blocks")
    spread = low.node("Unsqueeze", [scales, shared_table(low, "axis_last", torch.tensor([-1]))], f"{prefix}_block_scales")
    scaled = low.node(op, [by_block, spread], f"{prefix}_scaled_blocks")
    return low.node("Reshape", [scaled, low.array(f"{prefix}_shape", torch.tensor([rows, columns]))], prefix)


def blockwise_sub(low, prefix: str, values: str, zeros: str, rows: int, columns: int, block: int) -> str:
    """values [rows, columns] − zeros [rows, columns/block], each zero point over ``block`` columns."""
    return blockwise(low, prefix, values, zeros, rows, columns, block, op="Sub")
