"""Training, evaluation, prediction, metrics, checkpoints, distributed set-up, reports and plots."""
