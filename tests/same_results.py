#!/usr/bin/env python3
"""same_results.py A.h5 B.h5: whether two results files hold the same runs with the same bytes
in every dataset and attribute, the runs' wall times (seconds, tokens_per_second) aside.
Prints the differences and exits 1 when there are any, 0 when there are none, 77 (skip)
without numpy and h5py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dump_check import dump_differences  # noqa: E402 (exits 77 without numpy and h5py)

if len(sys.argv) != 3:
    sys.exit("usage: same_results.py A.h5 B.h5")
differences = dump_differences(sys.argv[1], sys.argv[2], ignore=("seconds", "tokens_per_second"))
for d in differences:
    print(f"differs: {d[:300]}" + ("..." if len(d) > 300 else ""))
if differences:
    sys.exit(1)
print(f"same results: {sys.argv[1]} and {sys.argv[2]}")
