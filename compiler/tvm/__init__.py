"""The TVM road: the only package that imports TVM's compiler APIs, one module per stage.

frontend (ONNX -> Relax) -> passes (graph rewrites) -> pipelines (per device kind, with
schedules/ and records) -> tuning (MetaSchedule, the tuned-vs-default verdict) -> bundle
(golden data, manifest, the written bundle). Each stage imports only the ones before it.
"""
