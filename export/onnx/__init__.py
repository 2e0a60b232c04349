"""ONNX export, int8 quantisation, bundle writing and verification."""
