"""`python -m bench`: every benchmark, one after the other."""

import importlib
import pkgutil

import bench

SKIP = {"service", "__main__"}

for module in sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in SKIP):
    print(f"\n=== bench.{module} ===", flush=True)
    importlib.import_module(f"bench.{module}").main()
