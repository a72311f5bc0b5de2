"""Wall time of compiling a bucket's programs, per variant (see jaxtune.benchmarks.compile).

    python experiments/bench_compile.py --models cnn1d cnn2d mnist1d-mlp --repeats 3 --json
"""

from jaxtune.benchmarks.compile import main

if __name__ == "__main__":
    main()
