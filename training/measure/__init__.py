"""The commands that measure or report, apart from the loop they measure.

bench (+ bench_micro: the selection and teacher micro-benchmarks; targets: the fast-path targets from one bench
result) · profile (the step's phases one by one) · timing (what bench and profile share: the timed run, its
batches, the clocks, the record of the machine) · cost_report (`launch.py cost`) · report (a run's figures)
· table (markdown tables from result files, for benchmarks/README.md).

They build the training step through training/build.py, so what they time is what `train` runs.
"""
