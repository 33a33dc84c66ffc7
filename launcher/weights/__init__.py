"""Model weights, locked: the lock file (lockfile) and the standalone downloader the images use (fetch).

Importing this package imports neither pydantic nor huggingface_hub; each is loaded by the function that needs it.
"""
