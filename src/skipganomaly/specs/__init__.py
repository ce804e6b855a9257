"""The bottom layer: what the rest of the package agrees on before anything runs.

Errors a user can act on (:mod:`.errors`), the typed configuration and its YAML and ``--set``
rules (:mod:`.config`), the bundled configs (:mod:`.bundled_configs`), and one spec per model
(:mod:`.models`), protocol (:mod:`.protocols`) and score term (:mod:`.score_terms`). Nothing here
imports PyTorch or any other layer of the package.
"""
