"""Tests of the appliance's stores (mirrors device/store)."""
