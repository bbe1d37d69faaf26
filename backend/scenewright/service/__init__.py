"""The local HTTP service: the Blender add-on's only way to the sampler (see server.py)."""
