"""Exact int8 convolutions on x86 CPUs without VNNI: ``vpmaddubsw`` or ``vpmaddwd``.

x86 CPUs with AVX2 but no AVX-512 VNNI (AMD Zen 2/3, Intel Haswell..Skylake client) and AVX-512
CPUs without VNNI (Skylake-SP) have no byte dot product. Two instruction sequences stand in for it:

* ``vpmaddubsw`` multiplies u8 activations by s8 weights and sums adjacent pairs into int16 with
  saturation; ``vpmaddwd`` by ones then sums adjacent int16 into int32::

      acc[lane] (s32) += sum(a[k] * b[lane, k] for k < 4)       # as two int16 pair sums

  A pair sum is at most ``2 * 255 * |w|`` in magnitude, so it is exact when every weight of the
  convolution lies in ``[-64, 64]`` (``2 * 255 * 64 = 32640 < 32767``): the weights of
  ``mmopt quantize --weight-bits 7`` (onnxruntime's ``reduce_range``). With full-range weights
  the saturation makes the result depend on the data: that is onnxruntime's inexact AVX2 int8
  path, which mmopt never takes. Weights are checked per convolution at compile time
  (:meth:`DotProduct.accepts`); 32 multiply-adds take 3 instructions.
* otherwise both operands are widened to int16 and ``vpmaddwd`` multiplies them::

      acc[lane] (s32) += a[0] * b[lane, 0] + a[1] * b[lane, 1]        # a, b int16; no saturation

  Products of u8 (or s8) activations and s8 weights are at most ``2 * 255 * 128`` in magnitude, far
  inside int32, so every accumulation is exact, like ``vpdpbusd``'s, for any int8 weights; 16
  multiply-adds take 2 instructions plus the widening of the input.

Both are the same packed, register-tiled, tensorized convolution as the VNNI one
(:func:`mmopt.codegen.int8_dot.schedule_dot_conv`). For ``vpmaddwd``, with a reduction block of 2
int16 instead of 4 bytes:

* weights are packed at compile time as int16 pairs ``[OC/lanes, KH, KW, IC/2, lanes, 2]``;
* the kernel widens its (zero-point padded) uint8 input to int16 once per call
  (:data:`~mmopt.codegen.int8_dot.WIDEN_BLOCK`), so each instruction's activation pair is one
  32-bit broadcast from memory, as for VNNI;
* ``vpmaddwd`` does not accumulate: each instruction is followed by a ``vpaddd`` into the
  accumulator, and the product needs a register of its own (``temporaries``: the broadcast and the
  product), which the register tile leaves free (16 registers on AVX2).

``vpmaddubsw`` reads the uint8 input and the VNNI weight layout directly; it needs a third
temporary (the vector of int16 ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmopt.codegen.int8_dot import DotProduct


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


@dataclass(frozen=True)
class PairSumDotProduct(DotProduct):
    """``vpmaddubsw`` then ``vpmaddwd`` by ones: ``acc[lanes] += sum_k a[k] * b[lane, k]`` over 4
    u8 x s8 products, exact for weights in ``[-weight_limit, weight_limit]`` (module docstring)."""

    #: the int16-to-int32 pair sum (``vpmaddwd``) applied to the byte products
    pair_intrinsic: str = ""

    def implementation(self):
        from tvm.script import tirx as T

        lanes = self.lanes
        byte_type, pair_type, acc_type = f"int8x{4 * lanes}", f"int16x{2 * lanes}", f"int32x{lanes}"
        products, pairs = self.llvm_intrinsic, self.pair_intrinsic

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((4,), "uint8", offset_factor=1),
                 b: T.Buffer((lanes, 4), "int8", offset_factor=1),
                 acc: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(acc[0:lanes], a[0:4], b[0:lanes, 0:4])
                T.writes(acc[0:lanes])
                # the 4 activation bytes as one int32, broadcast to every lane
                quad = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
                acc[T.ramp(T.int32(0), 1, lanes)] = acc.vload([0], dtype=acc_type) + (
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(pairs),
                        T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(products),
                            T.reinterpret(T.broadcast(quad, lanes), dtype=byte_type),
                            b.vload([0, 0], dtype=byte_type),
                            dtype=pair_type),
                        T.broadcast(T.int16(1), 2 * lanes),
                        dtype=acc_type))

        return impl


def _pmaddubsw(lanes: int, products: str, pairs: str, registers: int) -> PairSumDotProduct:
    return PairSumDotProduct("pmaddubsw", lanes, "uint8", products, accumulators=registers // 2,
                             registers=registers, temporaries=3, mnemonic="vpmaddubsw",
                             tiles="square", weight_limit=64, pair_intrinsic=pairs)


#: AVX-512BW vpmaddubsw + vpmaddwd on zmm: 16 int32 lanes, 32 registers
PMADDUBSW_512 = _pmaddubsw(16, "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512", 32)
#: AVX2 vpmaddubsw + vpmaddwd on ymm: 8 lanes, 16 registers
PMADDUBSW_256 = _pmaddubsw(8, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd", 16)
#: the same on AVX-512 CPUs, which have 32 ymm registers
PMADDUBSW_256_EVEX = _pmaddubsw(8, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd", 32)
#: on xmm (4 lanes), for output channel counts that are multiples of 4 only (12, 20, 44: a DB
#: detector's head): half the work per instruction, but 3-6x the plain integer loop they replace
PMADDUBSW_128 = _pmaddubsw(4, "llvm.x86.ssse3.pmadd.ub.sw.128", "llvm.x86.sse2.pmadd.wd", 16)
PMADDUBSW_128_EVEX = _pmaddubsw(4, "llvm.x86.ssse3.pmadd.ub.sw.128", "llvm.x86.sse2.pmadd.wd", 32)


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
#: on xmm (4 lanes), as ``PMADDUBSW_128``
PMADDWD_128 = _pmaddwd("pmaddwd", 4, "llvm.x86.sse2.pmadd.wd", 16)
PMADDWD_128_EVEX = _pmaddwd("pmaddwd", 4, "llvm.x86.sse2.pmadd.wd", 32)


def pmaddwd_products(tvm_target) -> list:
    """The dot products an x86 ``tvm_target`` without VNNI has, widest first, and for each width
    ``vpmaddubsw`` (for convolutions whose weights it takes exactly) before ``vpmaddwd``."""
    from tvm.target import codegen

    if codegen.target_has_features(["avx512bw"], tvm_target):
        return [PMADDUBSW_512, PMADDWD_512, PMADDUBSW_256_EVEX, PMADDWD_256_EVEX,
                PMADDUBSW_128_EVEX, PMADDWD_128_EVEX]
    if codegen.target_has_features(["avx2"], tvm_target):
        return [PMADDUBSW_256, PMADDWD_256, PMADDUBSW_128, PMADDWD_128]
    return []
