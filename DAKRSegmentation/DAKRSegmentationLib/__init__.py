"""The work of the DAKRSegmentation module without Qt: MRML nodes ⇄ files, the backend client,
job polling, results tables and plots, and audit cases. Importable wherever Slicer's MRML data
layer is (in Slicer, or with the PyPI ``slicer-core`` package under pytest)."""
