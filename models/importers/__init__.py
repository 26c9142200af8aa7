"""Importing real MegaDetector and DeepFaune weights: identify, load if trusted, export, check.

Needs the `[import]` extra (torch, onnx); the runtime path never imports this package.
"""
