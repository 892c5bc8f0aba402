"""TensorRT: the static readiness check of an exported graph, the plugins for the custom ops, and the
engine builds (the export's "engines" stage)."""
