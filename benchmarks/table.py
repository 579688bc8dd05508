"""Markdown tables from bench/profile result files (the printer lives in training/measure/table.py).

python benchmarks/table.py benchmarks/results/*.json benchmarks/results/*/profile.json
"""

import sys

from unixkd.training.measure.table import main

if __name__ == "__main__":
    main(sys.argv[1:])
