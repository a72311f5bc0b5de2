"""Conditional against flattened spaces (evaluations to the optimum); see
jaxtune.benchmarks.conditional.

    python experiments/bench_conditional.py
    python experiments/bench_conditional.py --quick
"""

from jaxtune.benchmarks.conditional import main

if __name__ == "__main__":
    main()
