"""One-off performance studies and timing scripts (run from the repository root, e.g.
``python -m benchmarks.roofline``); their results and what was learned are in ``results/README.md``.
Not part of the installed package: the user commands are in ``experiments/``, the code they share
in ``co3d_jax/``."""
