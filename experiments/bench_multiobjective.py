"""ParEGO against random search and Optuna TPE by hypervolume (ZDT1, ZDT2); see
jaxtune.benchmarks.multiobjective.

    python experiments/bench_multiobjective.py
    python experiments/bench_multiobjective.py --quick
"""

from jaxtune.benchmarks.multiobjective import main

if __name__ == "__main__":
    main()
