"""Target presets: name -> TVM target, cross compiler, device kind and what this machine can do."""
