"""Inference: the Predictor interface, its implementations, heat maps, the model slot."""
from device.inference import litert  # noqa: F401  (registers the built-in "litert" predictor)
