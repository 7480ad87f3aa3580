"""DAKR: Dual-Alignment Knowledge Retention for continual multi-site segmentation.

The backend of the DAKRSegmentation 3D Slicer extension: data validation, networks,
continual-learning strategies, training, evaluation, the model store, the HTTP service
and the command line.
"""

__version__ = "0.1.0"
#: Version of the HTTP API; clients refuse a backend whose major version they do not know.
API_VERSION = "1.0"
