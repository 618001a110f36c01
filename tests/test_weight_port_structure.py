"""The porter reads every family's checkpoint knowledge from its spec: each family declares a
:class:`~co3d_jax.models.checkpoints.CheckpointSpec` whose re-layout rules the porter implements,
and has a ``--verify`` reference. (Import cycles and private imports: ``test_architecture.py``.)"""

from __future__ import annotations


def test_every_ported_family_declares_its_checkpoints():
    from co3d_jax.models import FAMILIES
    from co3d_jax.models.checkpoints import RELAYOUT_RULES, CheckpointSpec
    from weight_port.convert import VERIFIERS
    from weight_port.tensors import RELAYOUT

    assert set(RELAYOUT) == set(RELAYOUT_RULES)
    for fam in FAMILIES:
        spec = fam.checkpoints
        assert isinstance(spec, CheckpointSpec), fam.name
        assert set(spec.relayout) <= set(spec.layouts) and set(spec.blob_layouts) <= set(spec.layouts)
        assert all(spec.relayout_rule(layout) in RELAYOUT for layout in spec.layouts)
        assert fam.name in VERIFIERS
