"""Model definitions and the registry (:func:`create_model`)."""

from .registry import MODELS, create_model, list_models

__all__ = ["MODELS", "create_model", "list_models"]
