"""Federation on the device: the coordinator client and the persistent update outbox."""
from device.sync.client import (CoordinatorClient, CoordinatorRefused, CoordinatorUnavailable,
                                UnsafeDownload, UpdateRefused)
from device.sync.outbox import Entry, FlushResult, Outbox

__all__ = ["CoordinatorClient", "CoordinatorRefused", "CoordinatorUnavailable", "Entry",
           "FlushResult", "Outbox", "UnsafeDownload", "UpdateRefused"]
