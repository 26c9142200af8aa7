"""Helpers and fixtures shared by the tests: real servers, photos, workers, fault proxies."""
