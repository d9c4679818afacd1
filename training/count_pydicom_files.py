"""How many of pydicom's bundled test files pydicom decodes, and how many lmk_studio loads as
one image (multi-frame files load as their frames, file.dcm#k, and are counted as refused here).

    .venv/bin/python training/count_pydicom_files.py
"""
import warnings
from pathlib import Path

import pydicom

from lmk_studio.core.errors import LmkError
from lmk_studio.core.images import load_image

warnings.simplefilter("ignore")
d = Path(pydicom.__file__).parent / "data" / "test_files"
files = sorted(p for p in d.rglob("*") if p.is_file())
dec = ours = refused = 0
for p in files:
    try:
        _ = pydicom.dcmread(p).pixel_array  # decoding is the test
        ok = True
    except Exception:
        ok = False
    dec += ok
    try:
        load_image(p)
        ours += 1
    except LmkError:
        refused += 1
print(f"{len(files)} files; pydicom decodes {dec}; lmk_studio loads {ours}, refuses {refused} with a message")
