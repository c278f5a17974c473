"""com.microsoft ops written by onnxruntime's own tools compile for x86 and match onnxruntime.

Every model here comes from a real producer, not a hand-made graph:

(a) onnxruntime's graph optimizer at the extended level
    (``SessionOptions.optimized_model_filepath``): FusedConv (a CNN), FusedGemm + QuickGelu + FusedMatMul, and a transformer block's FusedMatMul,
    SkipLayerNormalization and Gelu;
(b) ``onnxruntime.quantization.quantize_dynamic`` on the zoo's 2-layer LSTM (DynamicQuantizeLSTM),
    then the extended-level optimizer (DynamicQuantizeMatMul); on the zoo's transformer block, then
    the extended-level optimizer (MatMulIntegerToFloat);
(c) ``onnxruntime.transformers.optimizer.optimize_model(..., model_type="bert")`` on the zoo's
    transformer block (Attention, SkipLayerNormalization with bias, BiasGelu) and on a two-layer
    BERT-style encoder exported by PyTorch (EmbedLayerNormalization, Attention with a padding mask
    or MultiHeadAttention, SkipLayerNormalization, FastGelu); on a LLaMA-style decoder block
    exported by PyTorch (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization,
    RotaryEmbedding); ``model_type="gpt2"`` on a GPT-2-style decoder exported with its past
    state (Attention with past/present);
(d) ``MatMulNBitsQuantizer`` (4-bit blocks) on the transformer block (MatMulNBits).

Each compiles with ``mmopt.compile(path, "x86", out)``; float models are verified against
onnxruntime on the same file by compile itself at its default tolerance (1e-4). The quantized LSTM
is held to the same tolerance: its decomposition quantizes exactly as onnxruntime does, so it agrees
far within one quantization step (1/255 of the activations' range).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

import mmopt
from mmopt.runtime.verify import DEFAULT_ATOL, DEFAULT_RTOL, compare, run_onnxruntime

pytestmark = pytest.mark.filterwarnings("ignore")


def _ms_ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node
                               if n.domain == "com.microsoft")


def _ort_extended(source: Path, target: Path) -> Path:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target


def _compile_verified(path: Path, out: Path, **kwargs):
    result = mmopt.compile(path, "x86", out, **kwargs)
    assert result.verification is not None and result.passed, result.verification.to_dict()
    return result


def _assert_decomposed_by_mmopt(path: Path, ops, **shapes):
    """``inspect --support`` says which extension handled each com.microsoft node."""
    from mmopt import ir as mir
    from mmopt.codegen.relax_import import support_report

    proto = mir.infer_shapes(mir.fix_input_shapes(mir.normalize_opset(mir.load(path)), shapes))
    report = support_report(proto, "x86", try_import=False)
    status = {o.op: (o.status, o.extension) for o in report.ops}
    for op_type in ops:
        kind = "kernel" if op_type == "MatMulNBits" else "decomposed"
        key = op_type if op_type in status else f"com.microsoft::{op_type}"  # ONNX's domain
        assert status[key] == (kind, "mmopt"), status


# --------------------------------------------------------------------------------------------------
# (a) the graph optimizer at the extended level


def test_cnn_fused_conv_from_onnxruntime_extended(tmp_path):
    from models_zoo.onnx_models import build_conv_bn_relu

    source = tmp_path / "cnn.onnx"
    onnx.save(build_conv_bn_relu(batch=1), source)
    path = _ort_extended(source, tmp_path / "cnn.ort.onnx")
    assert _ms_ops(path) == {"FusedConv": 4}
    _assert_decomposed_by_mmopt(path, ["FusedConv"])
    _compile_verified(path, tmp_path / "out" / "cnn")


def test_fused_gemm_quick_gelu_fused_matmul_from_onnxruntime_extended(tmp_path):
    from mmopt.ops.microsoft._testing import ms_model, rand

    # the patterns onnxruntime fuses: Gemm + LeakyRelu, x·σ(1.702x), MatMul(a, bᵀ) · 0.5
    source_model = ms_model("""
        g = Gemm <transB = 1> (x, w, bias)
        y = LeakyRelu <alpha = 0.1> (g)
        xk = Mul (x, k)
        s = Sigmoid (xk)
        z = Mul (x, s)
        bt = Transpose <perm = [0, 2, 1]> (b)
        ab = MatMul (a, bt)
        mm = Mul (ab, half)""",
        "float[2,16] x, float[2,4,8] a, float[2,6,8] b", "float[2,8] y, float[2,16] z, "
        "float[2,4,6] mm", w=rand(8, 16, seed=1), bias=rand(8, seed=2),
        k=np.array(1.702, np.float32), half=np.array(0.5, np.float32))
    source = tmp_path / "fusions.onnx"
    onnx.save(source_model, source)
    path = _ort_extended(source, tmp_path / "fusions.ort.onnx")
    assert _ms_ops(path) == {"FusedGemm": 1, "QuickGelu": 1, "FusedMatMul": 1}
    _assert_decomposed_by_mmopt(path, ["FusedGemm", "QuickGelu", "FusedMatMul"])
    _compile_verified(path, tmp_path / "out" / "fusions")


def test_transformer_block_from_onnxruntime_extended(tmp_path):
    from models_zoo.onnx_models import build_transformer_block

    source = tmp_path / "block.onnx"
    onnx.save(build_transformer_block(), source)
    path = _ort_extended(source, tmp_path / "block.ort.onnx")
    assert _ms_ops(path) == {"SkipLayerNormalization": 2, "FusedMatMul": 1, "Gelu": 1}
    _compile_verified(path, tmp_path / "out" / "block")


# --------------------------------------------------------------------------------------------------
# (b) quantize_dynamic on an LSTM


def test_lstm_quantize_dynamic(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models_zoo.rnn_models import build_lstm_classifier

    source = tmp_path / "lstm.onnx"
    onnx.save(build_lstm_classifier(batch=1), source)
    quantized = tmp_path / "lstm.int8.onnx"
    quantize_dynamic(source, quantized, weight_type=QuantType.QInt8)
    assert _ms_ops(quantized) == {"DynamicQuantizeLSTM": 2}
    fused = _ort_extended(quantized, tmp_path / "lstm.int8.ort.onnx")
    assert _ms_ops(fused) == {"DynamicQuantizeLSTM": 2, "DynamicQuantizeMatMul": 1}
    _assert_decomposed_by_mmopt(fused, ["DynamicQuantizeLSTM", "DynamicQuantizeMatMul"])
    for path in (quantized, fused):
        result = _compile_verified(path, tmp_path / "out" / path.stem.replace(".", "_"))
        assert result.verification.max_abs < 1e-4


def test_transformer_block_quantize_dynamic_matmul_integer_to_float(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models_zoo.onnx_models import build_transformer_block

    source = tmp_path / "block.onnx"
    onnx.save(build_transformer_block(), source)
    quantized = tmp_path / "block.int8.onnx"
    quantize_dynamic(source, quantized, weight_type=QuantType.QInt8)
    fused = _ort_extended(quantized, tmp_path / "block.int8.ort.onnx")
    ops = _ms_ops(fused)
    # q, k and v share one DynamicQuantizeLinear: MatMulIntegerToFloat; the others fuse whole
    assert ops == {"MatMulIntegerToFloat": 3, "DynamicQuantizeMatMul": 3,
                   "SkipLayerNormalization": 2, "FusedMatMul": 1, "Gelu": 1}, ops
    _assert_decomposed_by_mmopt(fused, list(ops))
    result = _compile_verified(fused, tmp_path / "out" / "block_int8")
    assert result.verification.max_abs < 1e-4


# --------------------------------------------------------------------------------------------------
# (c) the transformers optimizer


def test_transformer_block_bert_optimizer(tmp_path):
    from onnxruntime.transformers.optimizer import optimize_model

    from models_zoo.onnx_models import build_transformer_block

    source = tmp_path / "block.onnx"
    onnx.save(build_transformer_block(), source)
    optimized = optimize_model(str(source), model_type="bert", num_heads=4, hidden_size=64,
                               opt_level=0)
    path = tmp_path / "block.bert.onnx"
    optimized.save_model_to_file(str(path))
    assert _ms_ops(path) == {"Attention": 1, "SkipLayerNormalization": 2, "BiasGelu": 1}
    _compile_verified(path, tmp_path / "out" / "block_bert")


def _bert_encoder(path: Path) -> None:
    """A 2-layer BERT-style encoder (word/position/segment embeddings, padding mask, tanh GELU)
    exported by PyTorch's TorchScript exporter, with random weights."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, hidden: int, heads: int, ffn: int):
            super().__init__()
            self.heads, self.hidden = heads, hidden
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
            self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
            self.act = nn.GELU(approximate="tanh")

        def split(self, x):
            b, t, _ = x.shape
            return x.view(b, t, self.heads, self.hidden // self.heads).permute(0, 2, 1, 3)

        def forward(self, x, mask):
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = q @ k.transpose(-1, -2) / (self.hidden // self.heads) ** 0.5 + mask
            context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
            x = self.ln1(x + self.o(context.view(x.shape)))
            return self.ln2(x + self.down(self.act(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self, vocab=100, hidden=64, heads=4, ffn=128, layers=2):
            super().__init__()
            self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(32, hidden)
            self.segments = nn.Embedding(2, hidden)
            self.ln = nn.LayerNorm(hidden, eps=1e-12)
            self.register_buffer("position_ids", torch.arange(32).expand((1, -1)))
            self.layers = nn.ModuleList(Layer(hidden, heads, ffn) for _ in range(layers))

        def forward(self, input_ids, attention_mask, token_type_ids):
            positions = self.position_ids[:, :input_ids.shape[1]]
            x = self.ln(self.words(input_ids) + self.segments(token_type_ids)
                        + self.positions(positions))
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, mask)
            return x

    torch.manual_seed(0)
    ids = torch.zeros(1, 8, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Encoder().eval(), (ids, ids + 1, ids), str(path), input_names=names,
                      output_names=["hidden_states"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})


@pytest.mark.parametrize("multi_head", [False, True], ids=["Attention", "MultiHeadAttention"])
def test_bert_encoder_bert_optimizer(tmp_path, multi_head):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source = tmp_path / "bert.onnx"
    _bert_encoder(source)
    options = FusionOptions("bert")
    options.use_multi_head_attention = multi_head
    optimized = optimize_model(str(source), model_type="bert", num_heads=4, hidden_size=64,
                               optimization_options=options)
    path = tmp_path / "bert.opt.onnx"
    optimized.save_model_to_file(str(path))
    attention = "MultiHeadAttention" if multi_head else "Attention"
    ops = _ms_ops(path)
    assert ops[attention] == 2 and ops["FastGelu"] == 2 and ops["SkipLayerNormalization"] == 4
    assert ops["EmbedLayerNormalization"] == 1

    shapes = {n: (1, 8) for n in ("input_ids", "attention_mask", "token_type_ids")}
    _assert_decomposed_by_mmopt(path, [attention, "FastGelu", "SkipLayerNormalization",
                                       "EmbedLayerNormalization"], **shapes)
    # random integer inputs would index past the embedding tables: token ids, two segments and a
    # padding mask a tokenizer would give
    result = mmopt.compile(path, "x86", tmp_path / "out" / "bert", input_shapes=shapes,
                           verify=False)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (1, 8)).astype(np.int64),
             "attention_mask": np.array([[1, 1, 1, 1, 1, 1, 0, 0]], np.int64),
             "token_type_ids": np.array([[0, 0, 0, 1, 1, 1, 1, 1]], np.int64)}
    report = compare(run_onnxruntime(onnx.load(path), feeds), mmopt.load(result.library)(**feeds),
                     atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    assert report.passed, report.to_dict()


def _llama_block(path: Path) -> None:
    """A LLaMA-style decoder block (RMSNorm, rotary position embeddings read from cos/sin caches by
    position id, causal attention, SwiGLU MLP) exported by PyTorch's TorchScript exporter."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(d) * 0.1 + 1)

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1)

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int, positions: int = 64):
            super().__init__()
            self.heads, self.h = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
            inverse = 1.0 / 10000 ** (torch.arange(0, self.h, 2).float() / self.h)
            angles = torch.outer(torch.arange(positions).float(), inverse)
            self.cos, self.sin = (f(torch.cat((angles, angles), -1)).numpy()
                                  for f in (torch.cos, torch.sin))

        def forward(self, x, position_ids):
            b, s, _ = x.shape
            q, k, v = (p(x).view(b, s, self.heads, self.h).transpose(1, 2)
                       for p in (self.q, self.k, self.v))
            length = v.shape[-2]  # its own Shape node: the optimizer removes the rotary's
            cos = torch.tensor(self.cos)[:length][position_ids].unsqueeze(1)
            sin = torch.tensor(self.sin)[:length][position_ids].unsqueeze(1)
            q = (q * cos) + (rotate_half(q) * sin)
            k = (k * cos) + (rotate_half(k) * sin)
            scores = q @ k.transpose(2, 3) / self.h ** 0.5 + torch.triu(
                torch.full((s, s), -1e4), 1)
            return self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1))

    class Block(nn.Module):
        def __init__(self, d: int = 64, heads: int = 4, ffn: int = 128):
            super().__init__()
            self.norm1, self.norm2, self.final = RMSNorm(d), RMSNorm(d), RMSNorm(d)
            self.attention = Attention(d, heads)
            self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
            self.down = nn.Linear(ffn, d, bias=False)

        def forward(self, x, position_ids):
            h = x + self.attention(self.norm1(x), position_ids)
            y = self.norm2(h)
            h = h + self.down(nn.functional.silu(self.gate(y)) * self.up(y))
            return self.final(h)

    torch.manual_seed(0)
    # the optimizer matches the rotary pattern as TorchScript writes it with dynamic shapes and the
    # caches as Constant nodes (no constant folding)
    axes = {"x": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"}}
    torch.onnx.export(Block().eval(), (torch.randn(1, 8, 64), torch.arange(8)[None]), str(path),
                      input_names=["x", "position_ids"], output_names=["y"], opset_version=17,
                      dynamo=False, do_constant_folding=False, dynamic_axes=axes)


def test_llama_block_rms_norm_and_rotary_embeddings(tmp_path):
    from onnxruntime.transformers.optimizer import optimize_model

    source = tmp_path / "llama.onnx"
    _llama_block(source)
    optimized = optimize_model(str(source), model_type="bert", num_heads=4, hidden_size=64,
                               opt_level=0)
    path = tmp_path / "llama.opt.onnx"
    optimized.save_model_to_file(str(path))
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert (ops["SimplifiedLayerNormalization"], ops["SkipSimplifiedLayerNormalization"],
            ops["RotaryEmbedding"]) == (1, 2, 2), ops
    _assert_decomposed_by_mmopt(path, ["SimplifiedLayerNormalization",
                                       "SkipSimplifiedLayerNormalization", "RotaryEmbedding"],
                                x=(1, 8, 64), position_ids=(1, 8))
    # position ids a tokenizer would give (random integers could index past the caches)
    shapes = {"x": (1, 8, 64), "position_ids": (1, 8)}
    result = mmopt.compile(path, "x86", tmp_path / "out" / "llama", input_shapes=shapes,
                           verify=False)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 64)).astype(np.float32),
             "position_ids": np.arange(8, dtype=np.int64)[None]}
    report = compare(run_onnxruntime(onnx.load(path), feeds), mmopt.load(result.library)(**feeds),
                     atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    assert report.passed, report.to_dict()


def _gpt2_decoder(path: Path) -> None:
    """A 2-layer GPT-2-style decoder (Conv1D projections, causal mask from a tril buffer, the past
    keys and values of each layer as an input ``[2, batch, heads, past, head size]`` and the
    present ones as an output) exported by PyTorch's TorchScript exporter."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Conv1D(nn.Module):
        def __init__(self, outputs: int, inputs: int):
            super().__init__()
            self.outputs = outputs
            self.weight = nn.Parameter(torch.randn(inputs, outputs) * 0.1)
            self.bias = nn.Parameter(torch.randn(outputs) * 0.1)

        def forward(self, x):
            y = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
            return y.view(*(x.size()[:-1] + (self.outputs,)))

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int, context: int = 64):
            super().__init__()
            self.heads, self.d = heads, d
            self.register_buffer("bias", torch.tril(torch.ones(context, context)).view(
                1, 1, context, context))
            self.c_attn, self.c_proj = Conv1D(3 * d, d), Conv1D(d, d)

        def split(self, x, key=False):
            x = x.view(*(x.size()[:-1] + (self.heads, x.size(-1) // self.heads)))
            return x.permute(0, 2, 3, 1) if key else x.permute(0, 2, 1, 3)

        def forward(self, x, past):
            q, k, v = self.c_attn(x).split(self.d, dim=2)
            q, k, v = self.split(q), self.split(k, key=True), self.split(v)
            k = torch.cat((past[0].transpose(-2, -1), k), dim=-1)
            v = torch.cat((past[1], v), dim=-2)
            present = torch.stack((k.transpose(-2, -1), v))
            w = torch.matmul(q, k) / (float(v.size(-1)) ** 0.5)
            nd, ns = w.size(-2), w.size(-1)
            b = self.bias[:, :, ns - nd:ns, :ns]
            w = nn.Softmax(dim=-1)(w * b - 1e4 * (1 - b))
            a = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous()
            return self.c_proj(a.view(*(a.size()[:-2] + (a.size(-2) * a.size(-1),)))), present

    class Block(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn, self.fc, self.proj = Attention(d, heads), Conv1D(4 * d, d), Conv1D(d, 4 * d)

        def forward(self, x, past):
            a, present = self.attn(self.ln_1(x), past)
            x = x + a
            return x + self.proj(nn.functional.gelu(self.fc(self.ln_2(x)),
                                                    approximate="tanh")), present

    class Decoder(nn.Module):
        def __init__(self, d: int = 64, heads: int = 4):
            super().__init__()
            self.h = nn.ModuleList(Block(d, heads) for _ in range(2))
            self.ln_f = nn.LayerNorm(d)

        def forward(self, x, past_0, past_1):
            presents = []
            for block, past in zip(self.h, (past_0, past_1)):
                x, present = block(x, past)
                presents.append(present)
            return (self.ln_f(x), *presents)

    torch.manual_seed(0)
    past = torch.randn(2, 1, 4, 5, 16)
    axes = {"x": {0: "batch", 1: "sequence"}, "past_0": {1: "batch", 3: "past"},
            "past_1": {1: "batch", 3: "past"}}
    torch.onnx.export(Decoder().eval(), (torch.randn(1, 1, 64), past, past), str(path),
                      input_names=["x", "past_0", "past_1"],
                      output_names=["y", "present_0", "present_1"], opset_version=17,
                      dynamo=False, dynamic_axes=axes)


@pytest.mark.parametrize("steps", [1, 3])
def test_gpt2_decoder_with_past_state_gpt2_optimizer(tmp_path, steps):
    from onnxruntime.transformers.optimizer import optimize_model

    source = tmp_path / "gpt2.onnx"
    _gpt2_decoder(source)
    optimized = optimize_model(str(source), model_type="gpt2", num_heads=4, hidden_size=64,
                               opt_level=0)
    path = tmp_path / "gpt2.opt.onnx"
    optimized.save_model_to_file(str(path))
    assert _ms_ops(path) == {"Attention": 2, "SkipLayerNormalization": 4, "FastGelu": 2}
    attention = next(n for n in onnx.load(path).graph.node if n.op_type == "Attention")
    assert attention.input[4] == "past_0" and attention.output[1] == "present_0"
    # a decoding step (one new token) and a prompt chunk (three) after 5 cached positions
    shapes = {"x": (1, steps, 64), "past_0": (2, 1, 4, 5, 16), "past_1": (2, 1, 4, 5, 16)}
    _assert_decomposed_by_mmopt(path, ["Attention", "SkipLayerNormalization", "FastGelu"],
                                **shapes)
    _compile_verified(path, tmp_path / "out" / "gpt2", input_shapes=shapes)


# --------------------------------------------------------------------------------------------------
# (d) MatMulNBitsQuantizer


def test_matmul_nbits_quantizer(tmp_path):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from models_zoo.onnx_models import build_transformer_block

    model = build_transformer_block()
    source = tmp_path / "block.onnx"
    onnx.save(model, source)
    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False)
    quantizer.process()
    path = tmp_path / "block.q4.onnx"
    quantizer.model.save_model_to_file(str(path))
    assert _ms_ops(path) == {"MatMulNBits": 6}
    _assert_decomposed_by_mmopt(path, ["MatMulNBits"])
    q4 = _compile_verified(path, tmp_path / "out" / "block_q4")
    # the weights stay 4-bit in the artifact: smaller than the float model's
    fp32 = _compile_verified(source, tmp_path / "out" / "block_fp32")
    weights = sum(np.prod(t.dims) * 4 for t in model.graph.initializer if len(t.dims) == 2)
    assert q4.library.stat().st_size < fp32.library.stat().st_size - weights // 2
