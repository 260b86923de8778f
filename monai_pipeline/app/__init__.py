"""Application layer: the Python API (:mod:`~monai_pipeline.app.api`), the bundle runner, the CLI, the demo and
the synthetic phantoms. Nothing below this layer imports it."""
