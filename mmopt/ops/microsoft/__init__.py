"""onnxruntime's com.microsoft contrib ops, implemented through :mod:`mmopt.extend`.

Real ONNX files carry them because onnxruntime's own tools write them:

============================================  ================================================
producer                                      ops (module)
============================================  ================================================
``SessionOptions.optimized_model_filepath``   FusedConv, FusedGemm, FusedMatMul, QuickGelu,
(extended level)                              Gelu (:mod:`.activations`); DynamicQuantizeMatMul
                                              (:mod:`.quantized`)
``onnxruntime.transformers.optimizer``        Attention, MultiHeadAttention, with past/present
                                              state (:mod:`.attention`), SkipLayerNormalization,
                                              EmbedLayerNormalization, SimplifiedLayerNormalization
                                              and SkipSimplifiedLayerNormalization (RMSNorm,
                                              :mod:`.normalization`), RotaryEmbedding
                                              (:mod:`.rotary`), FastGelu, BiasGelu
LLM exporters (onnxruntime-genai's builder)   GroupQueryAttention with a growing KV cache
                                              (:mod:`.group_query_attention`)
``quantize_dynamic``                          DynamicQuantizeLSTM; with the extended-level
                                              optimizer after it, MatMulIntegerToFloat
                                              (:mod:`.quantized`)
``MatMulNBitsQuantizer``                      MatMulNBits, a kernel (:mod:`.matmul_nbits`)
============================================  ================================================

All but MatMulNBits are exact decompositions into standard ONNX ops. onnxruntime runs every one of
them, so it stays the reference that verification compares against.
"""

from mmopt.ops.microsoft import (
    activations,
    attention,
    group_query_attention,
    matmul_nbits,
    normalization,
    quantized,
    rotary,
)

__all__ = ["activations", "attention", "group_query_attention", "matmul_nbits", "normalization",
           "quantized", "rotary"]
