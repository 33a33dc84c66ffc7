"""`launcher sweep`: one preset and dataset, a grid of overrides, one ordinary run per combination.

grid.py expands the grid; prepare.py turns it into prepared jobs (every run planned and validated exactly as
`launcher run` plans it) grouped by the caches they read, so each distinct cache is computed once; the
backend modules here start the cache passes (LORA_GYM_STAGE=cache) and then the trainings (LORA_GYM_STAGE=
train) on their platform; registry.py groups the run ids under the sweep id in the run registry.
"""
