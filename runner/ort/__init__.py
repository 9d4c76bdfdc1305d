"""ONNX Runtime: exported graphs (`runner export`) and the `onnxruntime` search engine."""
