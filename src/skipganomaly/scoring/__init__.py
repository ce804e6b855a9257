"""From trained weights to numbers: the scoring engine (:mod:`.engine`), the decisions taken on
scores (:mod:`.decisions`: normalisation, threshold, epoch, the improved score's terms), their
scaling (:mod:`.normalization`), metrics (:mod:`.metrics`), the shortcut check of trivial image
statistics (:mod:`.shortcuts`) and anomaly maps as colours (:mod:`.heatmaps`).

Nothing is imported here: :mod:`.normalization`, :mod:`.metrics` and :mod:`.heatmaps` load no
PyTorch, and the scoring service uses :mod:`.heatmaps` alone.
"""
