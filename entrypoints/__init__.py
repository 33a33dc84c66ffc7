"""Container entrypoint for LoRA Gym: runs musubi-tuner steps inside the image."""
