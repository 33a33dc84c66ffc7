"""`launcher publish`: a finished run on the Hugging Face Hub, ready to use in ComfyUI and diffusers.

source.py finds the run folder(s); loras.py picks and checks the LoRA files (musubi's format, unconverted);
comfyui.py / comfyui_ui.py write the workflows from comfyui_nodes.json's node definitions; card.py writes the
model card; bundle.py assembles every file locally; hub.py uploads only what the repo does not have yet.
"""
