"""Pure aggregation of head deltas: FedAvg, robust methods, central DP, validation."""
from .aggregate import (METHODS, StreamingMean, aggregate, clip_by_norm, clipped_fedavg,
                        coordinate_median, trimmed_mean, weighted_fedavg)
from .privacy import PrivacyLedger, dp_fedavg, epsilon_for, gaussian_mechanism
from .validate import UpdateRejected, validate_update

__all__ = ["METHODS", "StreamingMean", "aggregate", "clip_by_norm", "clipped_fedavg",
           "coordinate_median", "trimmed_mean", "weighted_fedavg", "PrivacyLedger",
           "dp_fedavg", "epsilon_for", "gaussian_mechanism", "UpdateRejected",
           "validate_update"]
