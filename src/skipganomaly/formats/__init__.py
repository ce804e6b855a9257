"""The files a run hands on: the checkpoint (:mod:`.checkpoint`, PyTorch) and the exported ONNX
file's metadata and content hash (:mod:`.onnx_file`, no PyTorch and no ``onnx`` package).
"""
