"""Using a trained run: the ONNX export (:mod:`.export`, its inference rewrites in
:mod:`.rewrites`), a run's up-to-date export (:mod:`.run_exports`), the PyTorch
:class:`~.predict.Predictor` and ``predict``'s CSV (:mod:`.predict`), and the
:class:`~.detector.Detector` on ONNX Runtime (:mod:`.detector`), both returning
:class:`~.prediction.Prediction`.

Nothing is imported here: the ONNX path (:mod:`.detector`, :mod:`.prediction`,
:mod:`.run_exports` when the export is current) loads no PyTorch.
"""
