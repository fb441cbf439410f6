"""Metrics: segmentation scores from a confusion matrix, KITTI Road measures, score rows."""
