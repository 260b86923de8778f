"""Coded terminology of segment names: SNOMED CT category, type and modifier, and display colours.

One table for every output that carries codes: Slicer's ``.seg.nrrd`` terminology entries and DICOM SEG segment
descriptions. Codes are ``[scheme, value, meaning]`` (``"SCT"`` = SNOMED CT).
"""

from __future__ import annotations

__all__ = ["ALTERED", "ANATOMY", "KNOWN_SEGMENTS", "PALETTE", "segment_codes"]

ALTERED = ["SCT", "49755003", "Morphologically Altered Structure"]
ANATOMY = ["SCT", "123037004", "Anatomical Structure"]
# name (lower case) -> (display colour RGB 0-1, SNOMED CT category, type, type modifier)
KNOWN_SEGMENTS: dict[str, tuple[tuple[float, float, float], list[str], list[str], list[str] | None]] = {
    "tumor": ((0.902, 0.294, 0.208), ALTERED, ["SCT", "108369006", "Neoplasm"], None),
    "tumour": ((0.902, 0.294, 0.208), ALTERED, ["SCT", "108369006", "Neoplasm"], None),
    "neoplasm": ((0.902, 0.294, 0.208), ALTERED, ["SCT", "108369006", "Neoplasm"], None),
    "nodule": ((0.949, 0.612, 0.176), ALTERED, ["SCT", "27925004", "Nodule"], None),
    "mass": ((0.902, 0.294, 0.208), ALTERED, ["SCT", "4147007", "Mass"], None),
    "lesion": ((0.902, 0.294, 0.208), ALTERED, ["SCT", "52988006", "Lesion"], None),
    "edema": ((0.969, 0.867, 0.322), ALTERED, ["SCT", "79654002", "Edema"], None),
    "necrosis": ((0.522, 0.361, 0.690), ALTERED, ["SCT", "6574001", "Necrosis"], None),
    "lung": ((0.553, 0.757, 0.894), ANATOMY, ["SCT", "39607008", "Lung"], None),
    "right lung": ((0.416, 0.686, 0.882), ANATOMY, ["SCT", "39607008", "Lung"], ["SCT", "24028007", "Right"]),
    "left lung": ((0.776, 0.655, 0.863), ANATOMY, ["SCT", "39607008", "Lung"], ["SCT", "7771000", "Left"]),
}
# colours for labels with other names (ColorBrewer Set1 without the red kept for tumours)
PALETTE = [(0.216, 0.494, 0.722), (0.302, 0.686, 0.290), (0.596, 0.306, 0.639), (1.0, 0.498, 0.0),
           (1.0, 1.0, 0.2), (0.651, 0.337, 0.157), (0.969, 0.506, 0.749), (0.6, 0.6, 0.6)]


def segment_codes(name: str) -> tuple[list[str], list[str], list[str] | None]:
    """``(category, type, modifier)`` codes of a segment name (case-insensitive); an unknown name is coded as a
    morphologically altered structure of type ``Lesion`` so that a DICOM object always carries codes."""
    known = KNOWN_SEGMENTS.get(name.lower())
    if known is None:
        return ALTERED, ["SCT", "52988006", "Lesion"], None
    return known[1], known[2], known[3]
