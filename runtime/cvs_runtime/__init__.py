"""The runtime: engines in, option log-probs out.

It sees token ids, image tensors and prefixes, never surveys or prompt text. It imports neither
torch, nor tensorrt (unless asked for a TensorRT engine), nor the export package.
"""
