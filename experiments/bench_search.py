"""Search benchmark (proposal latency, sample efficiency, anytime); see jaxtune.benchmarks.search.

    python experiments/bench_search.py --json
"""

from jaxtune.benchmarks.search import main

if __name__ == "__main__":
    main()
