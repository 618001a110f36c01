"""Model families (one file each, declaring its :class:`~co3d_jax.models.spec.FamilySpec`) and the
registry over them (:func:`create_model`)."""

from .registry import FAMILIES, create_model, family_of, list_models, names_help
from .spec import FamilySpec

__all__ = ["FAMILIES", "FamilySpec", "create_model", "family_of", "list_models", "names_help"]
