"""Evaluation of a model on a split: segmentation measures, KITTI Road measures."""
