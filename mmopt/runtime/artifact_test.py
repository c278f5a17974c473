"""Calling a loaded artifact: inputs go through buffers the model owns, outputs are the caller's."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    import models_zoo

    import mmopt

    out = tmp_path_factory.mktemp("mlp") / "mlp"
    mmopt.compile(models_zoo.build("mlp_gelu"), "x86", out, verify=False)
    return mmopt.load(out)


def test_results_do_not_alias_between_calls(mlp):
    shape = mlp.meta.inputs[0].shape
    a = np.full(shape, 0.5, np.float32)
    b = np.full(shape, -2.0, np.float32)
    first = mlp(a)
    kept = {k: v.copy() for k, v in first.items()}
    second = mlp(b)
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])  # not overwritten by call two
        assert not np.shares_memory(first[name], second[name])
    np.testing.assert_array_equal(mlp(a)[name], kept[name])  # the same input, the same output


def test_inputs_are_cast_within_their_kind_and_may_be_strided(mlp):
    shape = mlp.meta.inputs[0].shape
    x = np.random.default_rng(0).standard_normal(shape)
    expected = mlp(x.astype(np.float32))
    wide = np.zeros((shape[0], shape[1] * 2))
    wide[:, ::2] = x  # float64, non-contiguous view
    for name, value in mlp(wide[:, ::2]).items():
        np.testing.assert_array_equal(value, expected[name])
    with pytest.raises(Exception, match="dtype int64 given"):
        mlp(x.astype(np.int64))
