"""Tests of the appliance's side of the federation (mirrors device/sync)."""
