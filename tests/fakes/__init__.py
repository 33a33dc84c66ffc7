"""Test doubles only: stand-ins for musubi-tuner and `accelerate`, which cannot run without a GPU."""
