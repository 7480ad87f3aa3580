"""The work of the DAKRSegmentation module without Qt: MRML nodes ⇄ files, the backend client,
job polling, results tables and plots, and audit cases. Importable wherever Slicer's MRML data
layer is (in Slicer, or with the PyPI ``slicer-core`` package under pytest)."""

#: The oldest Slicer release the module supports: the first with Python 3.12 (the backend needs ≥ 3.11).
MINIMUM_SLICER_VERSION = (5, 10)
#: Python of that release; the module and the shipped backend run on it.
MINIMUM_PYTHON_VERSION = (3, 12)
