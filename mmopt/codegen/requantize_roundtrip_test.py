"""Quantize -> dequantize round trips inside a kernel lose the 8-bit detour, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest


def _roundtrip_func(dtype: str, zero: float, scale: float, inverse: float):
    """A TE kernel ``y = (float32(q(x)) - zero) * scale`` with ``q`` the QuantizeLinear
    arithmetic ``dtype(min(max(nearbyint(x * inverse) + zero, lo), hi))``, inlined into one
    expression (as scheduling leaves it)."""
    from tvm import te, tirx

    lo, hi = (0.0, 255.0) if dtype == "uint8" else (-128.0, 127.0)
    x = te.placeholder((4096,), "float32", name="x")

    def body(i):
        r = tirx.nearbyint(x[i] * tirx.const(inverse, "float32"))
        if zero:
            r = r + tirx.const(zero, "float32")
        q = tirx.Cast(dtype, tirx.min(tirx.max(r, tirx.const(lo, "float32")),
                                      tirx.const(hi, "float32")))
        value = tirx.Cast("float32", q)
        if zero:
            value = value - tirx.const(zero, "float32")
        return value * tirx.const(scale, "float32")

    y = te.compute((4096,), body, name="y")
    return te.create_prim_func([x, y])


def _run(func, x):
    import tvm

    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=tvm.target.Target({"kind": "llvm"}))
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def _inputs():
    """Ties, both signs, values far outside the 8-bit range, huge magnitudes (r beyond 2**24)."""
    rng = np.random.default_rng(0)
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32)
    wide = rng.uniform(-400, 400, 2000).astype(np.float32)
    huge = np.array([3e7, -3e7, 1e20, -1e20, 16777217.0, -16777217.0], np.float32)
    x = np.concatenate([ties, wide, huge, rng.standard_normal(4096).astype(np.float32) * 50])
    return x[:4096]


@pytest.mark.parametrize("dtype,zero", [("uint8", 128.0), ("uint8", 0.0), ("uint8", 37.0),
                                         ("int8", 0.0), ("int8", -5.0)])
def test_roundtrip_is_folded_and_bit_identical(dtype, zero):
    import tvm

    from mmopt.codegen.requantize_roundtrip import fold_requantize_roundtrips

    func = _roundtrip_func(dtype, zero, 0.0732, 1.0 / 0.0732)
    mod = tvm.IRModule({"main": func})
    folded = fold_requantize_roundtrips()(mod)["main"]
    text = folded.script()
    # the 8-bit cast and (with a zero point) the shift are gone; the rounding stays
    assert f'T.Cast("{dtype}"' not in text, text
    assert "nearbyint" in text
    if zero:
        assert f"T.float32({zero})" not in text.replace(f"T.float32({-zero})", ""), text
    x = _inputs()
    np.testing.assert_array_equal(_run(folded, x), _run(func, x))


def test_a_cast_of_a_value_that_is_not_rounded_stays():
    """``float32(uint8(min(max(x, 0), 255)))`` truncates a fractional ``x``: not a round trip."""
    import tvm
    from tvm import te, tirx

    from mmopt.codegen.requantize_roundtrip import fold_requantize_roundtrips

    x = te.placeholder((64,), "float32", name="x")
    y = te.compute((64,), lambda i: tirx.Cast("float32", tirx.Cast("uint8", tirx.min(
        tirx.max(x[i], tirx.const(0.0, "float32")), tirx.const(255.0, "float32")))), name="y")
    func = te.create_prim_func([x, y])
    folded = fold_requantize_roundtrips()(tvm.IRModule({"main": func}))["main"]
    assert 'T.Cast("uint8"' in folded.script()
