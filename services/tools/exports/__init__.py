"""Exports of the result tables to the formats other tools read.

- `camtrap_dp`: a Camtrap DP 1.0.2 package (GBIF, camtrapdp, Agouti), validated offline against
  the vendored official schemas;
- `megadetector`: MegaDetector batch output JSON (Timelapse, AddaxAI), and reading one back.
"""
