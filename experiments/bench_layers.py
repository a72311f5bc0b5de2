"""Layer by layer: a vmapped population against one member at a time (see
jaxtune.benchmarks.layers).

    python experiments/bench_layers.py --json
"""

from jaxtune.benchmarks.layers import main

if __name__ == "__main__":
    main()
