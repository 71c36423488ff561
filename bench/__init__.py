"""The benchmark of p_rope's backends against what users pick instead (``python bench/run.py``).

- ``run``: the command line; one run measures every case of one device and writes the reports;
- ``results``: the workloads (layers, modes, dtypes), the kinds of call and one measured result;
- ``harness``: how a call is measured (threads, synchronization, warm-up, round-robin samples,
  peak memory) and the machine it ran on;
- ``entries``: what is measured in one case (ours per backend and kind, the baselines, the copies);
- ``baselines``: the third-party implementations, as their authors ship them;
- ``targets``: the targets as one table of rows, judged by one loop;
- ``report``: BENCHMARKS.md and the raw JSON.

Only ``entries``, ``baselines`` and ``harness`` import frameworks, lazily, inside functions.
"""
