"""Flower ServerApp, ClientApp and the in-process engine (the only Flower code)."""
