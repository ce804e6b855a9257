"""Training one run: the loop (:mod:`.trainer`), the moving average of the weights (:mod:`.ema`),
the TensorBoard mirror of the log (:mod:`.tensorboard`), and a run folder trained or resumed
(:mod:`.runs`).
"""
