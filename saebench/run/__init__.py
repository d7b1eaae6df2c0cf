"""Running a matrix: matrix → plan → stages → executors (local, Ray, dry run) → results store.

``execute(matrix)`` and ``run_matrix(path)`` are the entry points (saebench.run.execute).
"""
