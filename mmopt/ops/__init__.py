"""Op implementations mmopt ships, registered through the public extension API
(:mod:`mmopt.extend`) exactly as a plugin registers its own.

* :mod:`mmopt.ops.microsoft`: onnxruntime's ``com.microsoft`` contrib ops that onnxruntime's own
  tools write into ONNX files (graph optimizer, transformers optimizer, quantizers).
"""
