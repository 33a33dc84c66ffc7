"""Fake musubi_tuner.training (test double)."""
