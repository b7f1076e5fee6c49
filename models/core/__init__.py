"""The TensorFlow-free core shared by the appliance, the coordinator and training.

Bundles and their signatures, head weights and the update codec, preprocessing, the
LiteRT runtime, metrics, the NumPy head, SQLite and atomic-file helpers, configuration
files and message records. Nothing here imports TensorFlow, ``models.training``,
``device`` or ``coordinator`` (``lint-imports`` checks it).
"""
