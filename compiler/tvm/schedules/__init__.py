"""Schedule rules per device kind: ``cpu/`` holds edgecnn's own; CUDA uses dlight's (``pipelines.py``)."""
