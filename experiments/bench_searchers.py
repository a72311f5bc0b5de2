"""Searchers on standard test functions (median simple regret); see jaxtune.benchmarks.searchers.

    python experiments/bench_searchers.py --json
    python experiments/bench_searchers.py --quick
"""

from jaxtune.benchmarks.searchers import main

if __name__ == "__main__":
    main()
