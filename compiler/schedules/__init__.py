"""Default TVM schedule rules for CPU targets (blocked-layout direct conv, Winograd, pooling, dense)."""
