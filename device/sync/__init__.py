"""Federation on the device: the coordinator link (HTTP or Flower), the persistent
update outbox, installed bundles and the updater."""
from device.sync.client import CoordinatorClient
from device.sync.link import (CoordinatorLink, CoordinatorRefused, CoordinatorUnavailable,
                              UnsafeDownload, UpdateRefused)
from device.sync.outbox import Entry, FlushResult, Outbox

__all__ = ["CoordinatorClient", "CoordinatorLink", "CoordinatorRefused",
           "CoordinatorUnavailable", "Entry", "FlushResult", "Outbox", "UnsafeDownload",
           "UpdateRefused"]
