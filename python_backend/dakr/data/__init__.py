"""Data: reading volumes, describing and validating sites, preprocessing and patch sampling."""

from dakr.data.errors import DataError, ImageTooLargeError, SiteValidationError
from dakr.data.limits import ImageLimits
from dakr.data.io import SUPPORTED_SUFFIXES, image_suffix, label_image_like, read_image, sniff_format, write_image
from dakr.data.names import check_label_names, validate_name
from dakr.data.preprocessing import PreprocessedCase, preprocess_case, preprocess_image, restore_geometry
from dakr.data.sampling import PatchSampler
from dakr.data.site import CaseFiles, SiteSpec, case_id_from_image, discover_site, site_from_pairs
from dakr.data.validation import validate_site

__all__ = [
    "SUPPORTED_SUFFIXES",
    "CaseFiles",
    "DataError",
    "ImageLimits",
    "ImageTooLargeError",
    "PatchSampler",
    "PreprocessedCase",
    "SiteSpec",
    "SiteValidationError",
    "case_id_from_image",
    "check_label_names",
    "discover_site",
    "image_suffix",
    "label_image_like",
    "preprocess_case",
    "preprocess_image",
    "read_image",
    "restore_geometry",
    "site_from_pairs",
    "sniff_format",
    "validate_name",
    "validate_site",
    "write_image",
]
