"""Built-in multi-site demo data: synthetic brain MRI sites from the MNI ICBM152 2009a template.

Sites differ in contrast (T1w, T2w, FLAIR, PDw), field strength and scanner effects, so a model
fine-tuned on the last site forgets the first. Nothing is downloaded: the template ships inside
nilearn. See :func:`build_demo_data`.
"""

from dakr.demo.anatomy import LABEL_NAMES
from dakr.demo.build import build_demo_data
from dakr.demo.contrasts import DEMO_SITES, SiteProtocol

__all__ = ["DEMO_SITES", "LABEL_NAMES", "SiteProtocol", "build_demo_data"]
