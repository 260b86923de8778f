"""3D Slicer output: segmentations (``.seg.nrrd``), colour tables, surface meshes and Slicer folders.

- :mod:`~monai_pipeline.slicer.segmentation`: segments, ``.seg.nrrd`` files, colour tables;
- :mod:`~monai_pipeline.slicer.meshes`: surfaces in LPS mm, STL and VTK;
- :mod:`~monai_pipeline.slicer.export`: :func:`export_slicer`, one folder per case with a loader script.
"""
