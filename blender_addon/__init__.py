"""SceneWright: one reference image in, a scene of separate, placed objects out.

Only registration lives here. Submodules are imported inside register() so that
the bpy-free ones (client, backend_process) can be imported and tested alone.
"""

from __future__ import annotations


def _modules():
    from . import cli, operators, panels, preferences, properties

    return (properties, preferences, operators, panels, cli)


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
