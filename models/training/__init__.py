"""Training with TensorFlow: data loading, splits, architectures, training, evaluation,
cross-validation, export, pruning, int8 and the default bundle's build.

Only the training CLI (``python -m models``) and the coordinator's publisher and
simulator import this package; the appliance never does.
"""
