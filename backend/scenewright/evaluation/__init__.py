"""The benchmark protocol (../shared/benchmark/PROTOCOL.md): cases, metrics, `scenewright predict` and `scenewright eval`."""
