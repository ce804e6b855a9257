"""The machine a run uses: the device and fused optimiser (:mod:`.device`), precision
(:mod:`.precision`), cores and threads (:mod:`.cores`, :mod:`.threads`), several processes
(:mod:`.distributed`) and the file system (:mod:`.files`: atomic writes, output checks, the cache
folder). Imports only :mod:`skipganomaly.specs`.

Nothing is imported here: :mod:`.files` and :mod:`.cores` load no PyTorch, and the scoring-only
path (ONNX Runtime) imports :mod:`.files` without the rest.
"""
