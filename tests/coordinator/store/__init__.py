"""Tests of the coordinator's store (mirrors coordinator/store)."""
