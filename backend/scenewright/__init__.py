"""scenewright: one reference image in, a scene of separate, placed 3D objects out."""

__version__ = "0.1.0"
