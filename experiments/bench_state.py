"""What batch normalization, augmentation, bfloat16 compute and gradient accumulation
cost in one population (see jaxtune.benchmarks.state).

    python experiments/bench_state.py --json
"""

from jaxtune.benchmarks.state import main

if __name__ == "__main__":
    main()
