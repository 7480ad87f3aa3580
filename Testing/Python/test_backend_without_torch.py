"""The backend's torch-free layers (data reading and validation, the store, what ``dakr init`` does)
work in a Python without torch, such as the 3.12 venv standing in for Slicer's Python before the
PyTorch extension installed torch. Run in a child process so that nothing this test session imported
counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from conftest import REPO

SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dakr.data import io, validation
from dakr.store import Store

folder = Path(sys.argv[1])
image = sitk.GetImageFromArray(np.zeros((4, 6, 6), np.float32))
sitk.WriteImage(image, str(folder / "case_0000.nii.gz"))
assert io.read_image(folder / "case_0000.nii.gz").GetSize() == (6, 6, 4)
store = Store.init(folder / "store")
assert Store.open(folder / "store").sites() == [] and store.path == (folder / "store").resolve()
assert hasattr(validation, "validate_site")
assert "torch" not in sys.modules and "monai" not in sys.modules, sorted(m for m in sys.modules if m.startswith(("torch", "monai")))
print("torch-free layers ok")
"""


def test_data_and_store_layers_work_without_importing_torch(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "python_backend")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=environment, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch-free layers ok"
