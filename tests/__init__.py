"""The test suite; this runs before any test module (and before torch is imported)."""

import os

# pytest-xdist runs one worker per core, and each worker's torch keeps its pinned threads, so
# the cores are oversubscribed: OpenMP threads that spin between kernels then take CPU from the
# other worker (fast lane 85 s with spinning, 65 s without, 88 s on one worker). Sleeping
# instead changes only waiting, never a result; it reaches the stages' subprocesses through
# the environment. A value set outside the tests is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
