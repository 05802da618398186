"""pytest-benchmark suites (``pytest benchmarks/ --benchmark-only``): the checkout's dpir_fast and the helpers
beside this file importable, as run.py has them."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)
