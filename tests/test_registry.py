"""The family specs and the registry over them: names, patterns, renaming, and what the other
parts of the system (profile, evaluate, train, flops) read from a spec."""

import argparse

import pytest

import co3d_jax
from co3d_jax import normalisation
from co3d_jax.models import FAMILIES, family_of, names_help
from co3d_jax.models.spec import spec_of


def test_every_registered_name_builds_its_own_family():
    names = co3d_jax.list_models()
    assert len(names) == 28
    for name in names:
        model = co3d_jax.create_model(name)
        assert model.name == name
        assert model.family is family_of(name)
        assert sum(f.owns(name) for f in FAMILIES) == 1, name


@pytest.mark.parametrize("name, window, classes, continual", [
    ("cox3d_s_32", 32, 400, True), ("cox3d_xs_7", 7, 400, True), ("coi3d_16_charades", 16, 157, True),
    ("coslow_24", 24, 400, True), ("cor2plus1d_18_24", 24, 400, True), ("coslowfast_8x8_r50_64", 64, 400, True),
])
def test_patterns_build_any_window(name, window, classes, continual):
    model = co3d_jax.create_model(name)
    assert (model.config.window, model.num_classes, model.continual, model.name) == (window, classes, continual, name)


def test_unknown_name_lists_names_and_patterns():
    with pytest.raises(ValueError, match=r"unknown model 'cox3d_q_13'.*cox3d_<size>_<window>.*coi3d_<window>"):
        co3d_jax.create_model("cox3d_q_13")
    assert "R(2+1)D-18: r2plus1d_18_8, r2plus1d_18_16" in names_help()


@pytest.mark.parametrize("name, renamed", [
    ("cox3d_s_13", "cox3d_s_64"), ("cox3d_xs", "cox3d_xs_64"), ("coslow_8_charades", "coslow_64_charades"),
    ("coi3d_8", "coi3d_64"), ("x3d_s", None), ("slow_8x8_r50", None), ("r2plus1d_18_8", None),
    ("slowfast_8x8_r50", None),
])
def test_renamed_to_another_window(name, renamed):
    assert family_of(name).renamed(name, window=64) == renamed


def test_evaluate_window_option_reads_the_spec():
    from experiments.evaluate import model_name
    assert model_name(argparse.Namespace(model="coslow_8_charades", window=16)) == "coslow_16_charades"
    with pytest.raises(SystemExit, match="continual models"):
        model_name(argparse.Namespace(model="x3d_m", window=16))


def test_reported_rows_and_paper_batches():
    """The paper's table (co3d.md §6) and the batch sizes of co3d's profiling scripts (§5.5)."""
    reported = {n: r for f in FAMILIES for n, r in f.reported.items()}
    assert len(reported) == 20 and set(reported) <= set(co3d_jax.list_models())
    assert (reported["cox3d_m_64"].top1, reported["cox3d_m_64"].gflops) == (71.03, 0.33)
    assert (reported["slowfast_4x16_r50"].top1, reported["slowfast_4x16_r50"].gflops) == (67.06, 36.46)
    from experiments.profile import paper_batch
    want = {"x3d_s": 64, "cox3d_m_64": 64, "x3d_l": 32, "cox3d_l_16": 32, "r2plus1d_18_16": 32,
            "slowfast_8x8_r50": 16, "slow_8x8_r50": 8, "coi3d_64": 8, "cox3d_s_32": 64}
    assert {n: paper_batch(n) for n in want} == want


def test_normalisation_comes_from_one_place():
    imagenet = {"i3d_r50", "r2plus1d_18_8", "r2plus1d_18_16", "cor2plus1d_18_8", "cor2plus1d_18_16"}
    for name in co3d_jax.list_models():
        want = normalisation.IMAGENET if name in imagenet else normalisation.KINETICS
        assert co3d_jax.create_model(name).normalisation == want, name


def test_head_paths_exist_in_every_model():
    import jax

    from co3d_jax.params import flatten
    for f in FAMILIES:
        name = next(iter(f.variants))
        flat = flatten(jax.eval_shape(co3d_jax.create_model(name).init, jax.random.key(0)))
        assert f"{f.head}/kernel" in flat and f"{f.head}/bias" in flat, name
        if f.final_bn:
            assert any(k.endswith(f"/{f.final_bn}/scale") for k in flat), name


def test_a_hand_assembled_model_has_no_spec():
    model = co3d_jax.create_model("x3d_xs")
    import dataclasses
    bare = dataclasses.replace(model, family=None)
    assert bare == model  # the spec is not part of a model's identity
    with pytest.raises(ValueError, match="not built by co3d_jax.create_model"):
        spec_of(bare)
