"""The two run modes: folder runs and stream workers, with what they need to run (local Ray, metrics, logs)."""
