"""The TensorFlow line at run time: `lint-imports` (make test) checks the import graph of
our code; this imports every module of the appliance and of the core, as a Pi would,
and finds no TensorFlow or Keras loaded (a library could load them behind our back)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_appliance_or_core_module_loads_tensorflow():
    code = ("import importlib, os, pkgutil, sys\n"
            "os.environ['GPIOZERO_PIN_FACTORY'] = 'mock'\n"
            "import device, models.core\n"
            "names = [m.name for p in (device, models.core)\n"
            "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "print(len(names), sorted({'tensorflow', 'keras'} & set(sys.modules)))")

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300).stdout.split()

    assert int(out[0]) > 50   # every module was imported, not an empty walk
    assert out[1:] == ["[]"]
