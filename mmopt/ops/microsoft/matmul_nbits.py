"""com.microsoft ``MatMulNBits`` (4-bit) as a kernel that unpacks the weights inside the matmul.

``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` replaces ``MatMul`` by
``MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?)`` with attributes ``K``, ``N``, ``bits``,
``block_size``: ``B`` is ``uint8 [N, K/bs, bs/2]``, two 4-bit codes per byte (the even ``k`` in the
low nibble), ``scales`` ``[N · K/bs]`` (or ``[N, K/bs]``), ``zero_points`` packed the same way,
``uint8 [N · ⌈(K/bs)/2⌉]`` (or ``[N, ⌈(K/bs)/2⌉]``; 8 when absent). With ``b = k // bs``:

    W[n, k] = (code[n, k] - zero[n, b]) · scale[n, b]
    Y = A @ Wᵀ + bias                    A [..., K] -> Y [..., N]

This is what onnxruntime computes at ``accuracy_level`` 0 (dequantized weights, float32 products).
The kernel reads ``B`` packed -- the artifact keeps the weights at 4 bits, plus the scales -- and
unpacks them inside the matmul: ``A`` is flattened to ``[M, K]``; the output columns are split into
tiles of one vector (tiles in parallel); per tile, its ``K x lanes`` weights are unpacked into a
buffer of the thread, then each row's dot products run with the tile's columns in vector lanes.

Only ``bits = 4`` with uint8 zero points (or none), no ``g_idx``, float32 ``A`` are supported.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt import extend
from mmopt.extend.kernels import emit_scheduled_te
from mmopt.extend.rules import attr, dtype_of, present, static_shape

DOMAIN = "com.microsoft"
BLOCK = "matmul_nbits"
DEQUANTIZE = "dequantize_tile"


def check(node: ir.Node) -> str | None:
    bits = attr(node, "bits", 4)
    if bits != 4:
        return f"bits = {bits}; only 4-bit weights are supported"
    if present(node, 4) is not None:
        return "g_idx is not supported"
    zero = present(node, 3)
    if zero is not None and dtype_of(zero) not in (None, ir.DataType.UINT8):
        return "float zero points are not supported"
    if dtype_of(node.inputs[0]) not in (None, ir.DataType.FLOAT):
        return "only float32 inputs are supported"
    for name in ("K", "N", "block_size"):
        if not attr(node, name, 0):
            return f"attribute {name} is missing"
    block = attr(node, "block_size")
    if block < 2 or block & (block - 1):
        return f"block_size {block} is not a power of two >= 2"
    if static_shape(node.inputs[1]) is None:
        return "the packed weights have no static shape"
    return None


def unpack_reference(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                     k: int, n: int, block_size: int) -> np.ndarray:
    """The float ``[N, K]`` weights of a 4-bit MatMulNBits (numpy; tests and the reference)."""
    blocks = (k + block_size - 1) // block_size
    b = b.reshape(n, blocks, block_size // 2)
    codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, blocks * block_size).astype(np.float32)
    scale = scales.reshape(n, blocks).astype(np.float32)
    if zero_points is None:
        zero = np.full((n, blocks), 8.0, np.float32)
    else:
        packed = zero_points.reshape(n, -1)
        zero = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        zero = zero.astype(np.float32)
    weights = (codes - np.repeat(zero, block_size, axis=1)) * np.repeat(scale, block_size, axis=1)
    return weights[:, :k]


def reference(a, b, scales, zero_points=None, g_idx=None, bias=None, *, K, N, block_size,
              bits=4, accuracy_level=0):
    """MatMulNBits in numpy (float32 products of the dequantized weights)."""
    w = unpack_reference(np.asarray(b), np.asarray(scales),
                         None if zero_points is None else np.asarray(zero_points), K, N, block_size)
    y = np.matmul(a.astype(np.float32), w.T)
    return (y + bias if bias is not None else y).astype(np.float32)


def compute(a, b, scales, zero_points=None, g_idx=None, bias=None, *, K, N, block_size, **_):
    """TE compute: ``a`` ``[M, K]`` float32, ``b`` ``uint8 [N, K/bs, bs/2]`` -> ``[M, N]``."""
    from tvm import te, tirx

    m = a.shape[0]
    blocks = (K + block_size - 1) // block_size
    k = te.reduce_axis((0, K), name="k")
    scale2 = scales if len(scales.shape) == 2 else None
    zero2 = zero_points if zero_points is not None and len(zero_points.shape) == 2 else None
    zero_row = (blocks + 1) // 2

    def code(n, kk):
        byte = b[n, kk // block_size, (kk % block_size) // 2]
        nibble = (byte >> ((kk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
        return nibble.astype("float32")

    def zero(n, blk):
        if zero_points is None:
            return tirx.const(8.0, "float32")
        byte = zero2[n, blk // 2] if zero2 is not None else zero_points[n * zero_row + blk // 2]
        return ((byte >> ((blk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")).astype(
            "float32")

    def scale(n, blk):
        return scale2[n, blk] if scale2 is not None else scales[n * blocks + blk]

    def weight(n, kk):
        blk = kk // block_size
        return (code(n, kk) - zero(n, blk)) * scale(n, blk)

    # the float weights, transposed to [K, N]: the schedule computes them one column tile at a time
    # into a buffer of the thread that uses them (never the whole matrix)
    dequantized = te.compute((K, N), lambda kk, j: weight(j, kk), name=DEQUANTIZE)
    return te.compute((m, N), lambda i, j: te.sum(a[i, k] * dequantized[k, j], axis=k),
                      name=BLOCK)


def _lanes(n: int) -> int:
    return next(v for v in (16, 8, 4, 2, 1) if n % v == 0)


def schedule(sch) -> None:
    """Per tile of ``lanes`` output columns (tiles in parallel): unpack the tile's 4-bit weights
    into a ``[K, lanes]`` float buffer, then every row's dot products with the columns in vector
    lanes; the unpacking is paid once per tile, not once per row."""
    block = sch.get_sblock(BLOCK)
    i, j, k = sch.get_loops(block)
    lanes = _lanes(int(sch.get(j).extent))
    j_out, j_in = sch.split(j, factors=[None, lanes])
    sch.reorder(j_out, i, k, j_in)
    sch.parallel(j_out)
    sch.compute_at(sch.get_sblock(DEQUANTIZE), j_out)
    if lanes > 1:
        sch.vectorize(j_in)
    sch.decompose_reduction(block, i)


def emit(bb, inputs, attrs):
    """The importer side: flatten ``A`` to 2-D, the kernel, bias, original leading shape."""
    from tvm import relax

    a, b, scales = inputs[0], inputs[1], inputs[2]
    zero_points = inputs[3] if len(inputs) > 3 else None
    bias = inputs[5] if len(inputs) > 5 else None
    k, n = int(attrs["K"]), int(attrs["N"])
    lead = list(a.ty.shape.values[:-1])
    flat = bb.emit(relax.op.reshape(a, (-1, k)))
    params = {"K": k, "N": n, "block_size": int(attrs["block_size"])}
    y = emit_scheduled_te(bb, lambda *t: compute(*t, **params), flat, b, scales, zero_points,
                          schedule=schedule, name="matmul_nbits")
    if bias is not None:
        y = bb.emit(relax.op.add(y, bias))
    return relax.op.reshape(y, [*lead, n])


extend.register(extend.KernelRule(DOMAIN, "MatMulNBits", relax=emit, check=check,
                                  name="kernel_matmul_nbits"), reference=reference)

__all__ = ["check", "compute", "reference", "schedule", "unpack_reference"]
