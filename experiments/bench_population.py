"""Population engine vs. the Optuna user's trial loop (see jaxtune.benchmarks.population).

    python experiments/bench_population.py --json
"""

from jaxtune.benchmarks.population import main

if __name__ == "__main__":
    main()
