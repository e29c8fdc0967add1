#!/usr/bin/env python3
"""Fails unless two mpicnn checkpoints hold bitwise the same arrays under the given groups.

    /usr/bin/python3 tests/slurm/compare_checkpoints.py A.h5 B.h5 [GROUP ...]   (default: model optimizer)

Compares names, dtypes, shapes and raw bytes (a NaN equals only the same NaN); prints one summary line,
and for every array that differs the count of differing elements and the largest absolute difference.
"""
import sys

import h5py
import numpy as np


def arrays(path, group_name):
    found = {}
    with h5py.File(path, "r") as f:
        if group_name not in f:
            raise SystemExit(f"error: {path} has no /{group_name} group")

        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                found[name] = item[()]

        f[group_name].visititems(visit)
    return found


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    first, second = sys.argv[1], sys.argv[2]
    groups = sys.argv[3:] or ["model", "optimizer"]
    compared = 0
    problems = []
    for group in groups:
        a, b = arrays(first, group), arrays(second, group)
        if a.keys() != b.keys():
            problems.append(f"/{group}: datasets differ: only in first {sorted(a.keys() - b.keys())}, "
                            f"only in second {sorted(b.keys() - a.keys())}")
            continue
        for name in sorted(a):
            x, y = np.asarray(a[name]), np.asarray(b[name])
            compared += 1
            if x.dtype != y.dtype or x.shape != y.shape:
                problems.append(f"/{group}/{name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            elif x.tobytes() != y.tobytes():
                differing = int(np.count_nonzero(x != y))
                largest = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                problems.append(f"/{group}/{name}: {differing} of {x.size} elements differ, "
                                f"largest absolute difference {largest:g}")
    for problem in problems:
        print(problem)
    if problems:
        print(f"checkpoints differ: {len(problems)} of {compared} arrays under /{', /'.join(groups)}")
        return 1
    print(f"bitwise identical: {compared} arrays under /{', /'.join(groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
