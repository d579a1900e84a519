"""The benchmark behind `make bench`: machine facts, GEMM ceilings, reports, and a GPU variant."""
