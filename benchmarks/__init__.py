"""batchmagic against the tools users would pick instead: nine workloads, one entry point.

    python -m benchmarks setup                      # the peers' virtual environments (pinned)
    python -m benchmarks run                        # everything (about 25 minutes, quiet machine)
    python -m benchmarks run --quick                # tiny sizes: checks the harness (seconds)
    python -m benchmarks run --only W1,W3 --contenders batchmagic,aiohttp,openai

The project's simulator runs in its own process on 127.0.0.1, one per workload. Each run of
each contender is a fresh subprocess (the peers run with their own environment's interpreter,
batchmagic and the raw-client floors with the project's), started, reset-and-go, measured (wall,
process CPU of all threads, peak RSS) and interleaved over the repeats. Results go to
``benchmarks/results/compare.md`` and ``compare.json`` (``compare-quick.*`` for --quick); a full
run (no --quick, --only, --contenders, --repeats or --scale) also writes the manual's page of
record, ``docs/benchmarks.md``. ``python -m benchmarks docs [compare.json]`` writes that page
again from a saved full run.

Workloads: W1 latency-bound, W2 CPU-bound ceiling, W3 rate-limited, W4 transient faults,
W5 unknown and moving limit, W6 capacity collapse, W7 embeddings, W8 a million rows,
W9 a background run in a real kernel. ``http_stack.py`` and ``journal.py`` stay standalone.
"""
