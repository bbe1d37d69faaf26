"""Procedural blockout scene data: shapes, scene sampler, Blender rendering (training only).

Only `render.py` imports bpy, and only `make-data` worker processes import it.
"""
