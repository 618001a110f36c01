"""co3d-jax: Continual 3D CNNs (CoX3D, CoSlow, CoI3D) and their clip baselines in JAX."""

from .model import Model, StepOutput
from .models import create_model, list_models
from .params import load_params, save_params

__version__ = "0.1.0"
__all__ = ["Model", "StepOutput", "create_model", "list_models", "load_params", "save_params"]
