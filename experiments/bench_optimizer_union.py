"""One optimizer family alone vs. unions of families (see jaxtune.benchmarks.optimizer_union).

    python experiments/bench_optimizer_union.py --json
"""

from jaxtune.benchmarks.optimizer_union import main

if __name__ == "__main__":
    main()
