"""Puts the addon's package on the path, as `mitmdump -s addon.py` does."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
