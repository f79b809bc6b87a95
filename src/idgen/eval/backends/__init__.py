"""Metric models behind the interfaces in `idgen.eval.models` (heavy packages are imported lazily)."""
