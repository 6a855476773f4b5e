"""Shared foundations every other layer may import: devices and precision, validation of user numbers."""
