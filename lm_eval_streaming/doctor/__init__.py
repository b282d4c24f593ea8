"""``lm-eval-streaming doctor``: is this machine's device/dtype sound for scoring, before any weights load."""
