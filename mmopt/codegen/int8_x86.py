"""Exact int8 convolutions on x86 CPUs without VNNI: ``vpmaddwd`` on int16 operands.

x86 CPUs with AVX2 but no AVX-512 VNNI (AMD Zen 2/3, Intel Haswell..Skylake client) and AVX-512
CPUs without VNNI (Skylake-SP) have no byte dot product. ``vpmaddubsw`` (u8 x s8 -> pairs summed in
int16) looks like one, but its pair sums saturate (``255 * 127 * 2`` does not fit int16), so the
result depends on the data: that is onnxruntime's inexact AVX2 int8 path. mmopt instead widens both
operands to int16 and uses ``vpmaddwd``::

    acc[lane] (s32) += a[0] * b[lane, 0] + a[1] * b[lane, 1]        # a, b int16; no saturation

Products of u8 (or s8) activations and s8 weights are at most ``2 * 255 * 128`` in magnitude, far
inside int32, so every accumulation is exact, like ``vpdpbusd``'s. The kernel is the same packed,
register-tiled, tensorized convolution as the VNNI one (:func:`mmopt.codegen.quantized
.schedule_dot_conv`) with a reduction block of 2 int16 instead of 4 bytes:

* weights are packed at compile time as int16 pairs ``[OC/lanes, KH, KW, IC/2, lanes, 2]``;
* the kernel widens its (zero-point padded) uint8 input to int16 once per call
  (:data:`~mmopt.codegen.quantized.WIDEN_BLOCK`), so each instruction's activation pair is one
  32-bit broadcast from memory, as for VNNI;
* ``vpmaddwd`` does not accumulate: each instruction is followed by a ``vpaddd`` into the
  accumulator, and the product needs a register of its own (``temporaries``: the broadcast and the
  product), which the register tile leaves free (16 registers on AVX2).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmopt.codegen.quantized import DotProduct


@dataclass(frozen=True)
class WideningDotProduct(DotProduct):
    """``vpmaddwd``: ``acc[lanes] += a[0] * b[lane, 0] + a[1] * b[lane, 1]`` on int16 operands,
    as a multiply-add instruction followed by an int32 add."""

    def implementation(self):
        from tvm.script import tirx as T

        lanes, k = self.lanes, self.block
        operand, weight = self.operand, self.weight_dtype
        pair_type, acc_type = f"int16x{2 * lanes}", f"int32x{lanes}"
        intrinsic = self.llvm_intrinsic

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((k,), operand, offset_factor=1),
                 b: T.Buffer((lanes, k), weight, offset_factor=1),
                 acc: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(acc[0:lanes], a[0:k], b[0:lanes, 0:k])
                T.writes(acc[0:lanes])
                # the activation pair as one int32, broadcast to every lane
                pair = T.reinterpret(a.vload([0], f"{operand}x2"), dtype="int32")
                acc[T.ramp(T.int32(0), 1, lanes)] = acc.vload([0], dtype=acc_type) + (
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(intrinsic),
                        T.reinterpret(T.broadcast(pair, lanes), dtype=pair_type),
                        b.vload([0, 0], dtype=pair_type),
                        dtype=acc_type))

        return impl


def _pmaddwd(name: str, lanes: int, intrinsic: str, registers: int) -> WideningDotProduct:
    return WideningDotProduct(name, lanes, "uint8", intrinsic, accumulators=registers // 2,
                              block=2, operand_dtype="int16", weight_dtype="int16",
                              registers=registers, temporaries=2, mnemonic="vpmaddwd",
                              tiles="square")


#: AVX-512BW vpmaddwd on zmm: 16 int32 lanes, 32 registers
PMADDWD_512 = _pmaddwd("pmaddwd", 16, "llvm.x86.avx512.pmaddw.d.512", 32)
#: AVX2 vpmaddwd on ymm: 8 lanes, 16 registers (also the narrow variant on AVX-512 CPUs)
PMADDWD_256 = _pmaddwd("pmaddwd", 8, "llvm.x86.avx2.pmadd.wd", 16)
#: the same on AVX-512 CPUs, which have 32 ymm registers
PMADDWD_256_EVEX = _pmaddwd("pmaddwd", 8, "llvm.x86.avx2.pmadd.wd", 32)


def pmaddwd_products(tvm_target) -> list:
    """The ``vpmaddwd`` variants an x86 ``tvm_target`` without VNNI has, widest first."""
    from tvm.target import codegen

    if codegen.target_has_features(["avx512bw"], tvm_target):
        return [PMADDWD_512, PMADDWD_256_EVEX]
    if codegen.target_has_features(["avx2"], tvm_target):
        return [PMADDWD_256]
    return []
