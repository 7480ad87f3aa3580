"""Know before you adapt: site-shift check, out-of-distribution warning, labelling order."""

from dakr.shift.check import SiteCheck, check_site, format_check
from dakr.shift.ood import ShiftedPrediction, predict_with_shift
from dakr.shift.ranking import RankedImage, rank_images
from dakr.shift.reference import ShiftReference, load_reference

__all__ = [
    "RankedImage",
    "ShiftReference",
    "ShiftedPrediction",
    "SiteCheck",
    "check_site",
    "format_check",
    "load_reference",
    "predict_with_shift",
    "rank_images",
]
