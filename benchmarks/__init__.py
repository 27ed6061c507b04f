"""The benchmarks and their tooling; ``benchmarks.procs`` is shared with the test suite (see its docstring)."""
