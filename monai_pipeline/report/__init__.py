"""Report stage: the HTML report of an evaluated run and the pictures in it.

- :mod:`~monai_pipeline.report.html`: :func:`build_report`, the self-contained ``index.html``;
- :mod:`~monai_pipeline.report.plots`: overlays, training curves, ROC/FROC/confusion plots, the 3D render.
"""

from monai_pipeline.report.html import build_report

__all__ = ["build_report"]
