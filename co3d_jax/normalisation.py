"""Input normalisation constants ``(mean, std)`` per RGB channel, on frames scaled to [0, 1].

Written once here; each family's spec (:mod:`co3d_jax.models.spec`) says which one its models use
(reference co3d.md §5.1).
"""

KINETICS = ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))
"""PySlowFast / co3d's Kinetics statistics (X3D, Slow, CoI3D, SlowFast)."""

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""ImageNet statistics (co3d evaluates the I3D and R(2+1)D clip baselines with these)."""

__all__ = ["KINETICS", "IMAGENET"]
