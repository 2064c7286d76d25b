"""Exit non-zero unless numpy dispatches no AVX-512 kernel (NPY_DISABLE_CPU_FEATURES took effect)."""

import sys

import numpy  # noqa: F401  (loads the dispatch tables)
from numpy._core import _multiarray_umath as umath


def current_targets(info):
    for value in info.values():
        if isinstance(value, dict):
            if "current" in value:
                yield value["current"]
            else:
                yield from current_targets(value)


used = {t for t in current_targets(getattr(umath, "__cpu_targets_info__", {}))
        if "512" in t or "V4" in t}
if used:
    sys.exit(f"numpy still dispatches AVX-512 kernels: {sorted(used)}")
print("numpy dispatches no AVX-512 kernel")
