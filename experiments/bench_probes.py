"""Cost of each probe per member relative to one training step (see jaxtune.benchmarks.probes).

    python experiments/bench_probes.py --populations 1 8
"""

from jaxtune.benchmarks.probes import main

if __name__ == "__main__":
    main()
