"""roadseg: road-scene semantic segmentation from labels to a served, monitored model."""

__version__ = "0.1.0"
