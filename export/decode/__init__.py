"""Incremental decoding in the artifact: the prefill and decode graphs (graphs.py) and their parity
gate, which prefills, decodes token by token through ONNX Runtime and compares with eager's
whole-sequence pass (gate.py)."""
