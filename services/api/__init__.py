"""The upload API: programs create deployments and upload photos (FastAPI on Ray Serve)."""
