"""`python -m lora_gym_entrypoint`: the same as the `lora-gym-entrypoint` command."""

import sys

from lora_gym_entrypoint.main import main

sys.exit(main())
