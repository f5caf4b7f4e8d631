"""Defenses: defective layers, training-time baselines (more to come: CSC purification, SFR)."""
