"""The export stage: checkpoint → ONNX parts → engines, validated and recorded in a manifest."""
