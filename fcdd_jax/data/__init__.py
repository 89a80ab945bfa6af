"""Dataset sources, preprocessing transforms and synthetic anomalies (see docs/DESIGN.md)."""
