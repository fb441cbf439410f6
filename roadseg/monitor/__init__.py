"""Monitoring: per-image features, the served-traffic log, drift reports."""
