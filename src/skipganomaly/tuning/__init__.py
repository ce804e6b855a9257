"""``skipganomaly tune``: the search space (:mod:`.space`), the Optuna study of trainings
(:mod:`.study`) and what it writes (:mod:`.outputs`). Imports nothing, so that the command line
loads Optuna only when ``tune`` runs."""
