"""onnxruntime's com.microsoft contrib ops, implemented through :mod:`mmopt.extend`.

Real ONNX files carry them because onnxruntime's own tools write them:

============================================  ================================================
producer                                      ops (module)
============================================  ================================================
``SessionOptions.optimized_model_filepath``   FusedConv, FusedGemm, FusedMatMul, QuickGelu,
(extended level)                              Gelu (:mod:`.activations`); DynamicQuantizeMatMul
                                              (:mod:`.quantized`)
``onnxruntime.transformers.optimizer``        Attention, MultiHeadAttention (:mod:`.attention`),
                                              SkipLayerNormalization, EmbedLayerNormalization
                                              (:mod:`.normalization`), FastGelu, BiasGelu
``quantize_dynamic`` (LSTMs)                  DynamicQuantizeLSTM (:mod:`.quantized`)
``MatMulNBitsQuantizer``                      MatMulNBits, a kernel (:mod:`.matmul_nbits`)
============================================  ================================================

All but MatMulNBits are exact decompositions into standard ONNX ops. onnxruntime runs every one of
them, so it stays the reference that verification compares against.
"""

from mmopt.ops.microsoft import activations, attention, matmul_nbits, normalization, quantized

__all__ = ["activations", "attention", "matmul_nbits", "normalization", "quantized"]
