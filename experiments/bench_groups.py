"""The engine's CPU group size (jaxtune.programs.CPU_GROUP) swept (see
jaxtune.benchmarks.groups).

    python experiments/bench_groups.py --json
"""

from jaxtune.benchmarks.groups import main

if __name__ == "__main__":
    main()
