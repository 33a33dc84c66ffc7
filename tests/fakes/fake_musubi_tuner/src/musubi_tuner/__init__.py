"""Test double of musubi-tuner (tests only): same module and parser layout, no models."""
