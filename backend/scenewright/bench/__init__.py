"""Speed and memory benchmarks (`scenewright bench`); results and commands go in docs/performance.md."""
