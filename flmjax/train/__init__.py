"""Training: the loss, the optimizer, the train state, the jitted step and the loop."""
