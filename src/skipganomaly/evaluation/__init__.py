"""Evaluating a trained checkpoint under its protocol: the ``metrics.json`` sections and
``scores.csv`` (:mod:`.record`), and the paper protocol's figure scored beside an honest one
(:mod:`.paper`). What each protocol means is :mod:`skipganomaly.specs.protocols`.
"""
