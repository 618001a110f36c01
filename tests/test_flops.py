"""FLOP/MAC and parameter counting (co3d_jax.flops).

The paper numbers are checked analytically (no tracing); only the small XLA checks lower
anything, at tiny resolutions and without compiling the full models.
"""

import jax
import jax.numpy as jnp
import pytest

import co3d_jax
from co3d_jax.flops import analytic_macs, count_params, model_xla_flops, paper_macs, valid_taps, xla_flops
from co3d_jax.layers import Conv, Sequential
from helpers import assert_paper_macs

# (model, mode, reproduced reference GMACs (co3d.md §5.5), ptflops 0.7.5 on our PyTorch mirrors of
# co3d's X3D / continual CoX3D, exact MACs)
PAPER = [
    ("x3d_xs", "clip", 0.645, 644_664_056),
    ("x3d_s", "clip", 2.091, 2_090_946_056),
    ("x3d_m", "clip", 5.041, 5_041_361_336),
    ("x3d_l", "clip", 19.40, 19_399_621_094),
    ("cox3d_s_13", "step", 0.169, 169_193_936),
    ("cox3d_m_16", "step", 0.331, 330_596_192),
    ("cox3d_l_16", "step", 1.263, 1_262_831_168),
    ("cox3d_s_64", "step", 0.169, 169_215_968),
]


@pytest.mark.parametrize("name, mode, ref_g, ptflops_exact", PAPER, ids=[p[0] for p in PAPER])
def test_paper_macs(name, mode, ref_g, ptflops_exact):
    assert_paper_macs(co3d_jax.create_model(name), mode, ref_g, ptflops_exact, digits=3 if ref_g < 10 else 2)


def test_paper_macs_clip_length_and_modes():
    m = co3d_jax.create_model("x3d_s")
    assert paper_macs(m, "clip") == paper_macs(m, "clip", t=m.clip_length)
    assert paper_macs(m, "clip", count_padded=False) < paper_macs(m, "clip")
    with pytest.raises(ValueError):
        paper_macs(m, "frames")


@pytest.mark.parametrize("name, expected", [("x3d_s", 3_794_322), ("x3d_l", 6_153_432), ("cox3d_m_64", 3_794_322)])
def test_count_params(name, expected):
    model = co3d_jax.create_model(name)
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert count_params(params) == expected


@pytest.mark.parametrize("n, k, s, p, expected", [(4, 3, 1, 1, 10), (5, 5, 1, 2, 19), (9, 3, 2, 1, 13), (7, 1, 1, 0, 7)])
def test_valid_taps(n, k, s, p, expected):
    assert valid_taps(n, k, s, p) == expected


CONV_NETS = {
    "dense_3x3x3": (Sequential.of(Conv(4, 8, 3, 1, 1, impl="lax")), (8, 8, 4), 4),
    "depthwise_stride2": (Sequential.of(Conv(8, 8, 3, (1, 2, 2), 1, groups=8, impl="lax")), (9, 9, 8), 5),
    "x3d_stem_like": (Sequential.of(Conv(3, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
                                    Conv(8, 8, (5, 1, 1), 1, (2, 0, 0), groups=8, impl="lax"), Conv(8, 16, 1)), (7, 7, 3), 3),
}


@pytest.mark.parametrize("name", list(CONV_NETS))
def test_xla_flops_equal_twice_valid_tap_macs(name):
    net, shape, t = CONV_NETS[name]
    params = jax.eval_shape(net.init, jax.random.key(0), shape)
    clip = jax.ShapeDtypeStruct((1, t, *shape), jnp.float32)
    valid = analytic_macs(net, shape, t, count_padded=False)
    assert xla_flops(net.forward, params, clip) == 2 * valid
    assert xla_flops(net.forward, params, clip, compiled=False) == 2 * valid
    assert analytic_macs(net, shape, t) > valid  # ptflops also counts the padded taps


def test_cox3d_step_is_much_cheaper_than_x3d_clip_in_xla():
    clip_model = co3d_jax.create_model("x3d_s", image_size=32)
    step_model = co3d_jax.create_model("cox3d_s_13", image_size=32)
    params = jax.eval_shape(clip_model.init, jax.random.key(0))  # same weights for both
    clip = model_xla_flops(clip_model, params, "clip", compiled=False)
    step = model_xla_flops(step_model, params, "step", compiled=False)
    assert 0 < step < clip / 5
