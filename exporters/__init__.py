"""Writers of compressed models: checkpoint directories and ONNX graphs."""
