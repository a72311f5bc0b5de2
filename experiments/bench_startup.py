"""Seconds from launch to the first chunk: cold, stored programs, traced programs
(see jaxtune.benchmarks.startup).

    python experiments/bench_startup.py mnist1d-mlp --repeats 3
"""

from jaxtune.benchmarks.startup import main

if __name__ == "__main__":
    main()
