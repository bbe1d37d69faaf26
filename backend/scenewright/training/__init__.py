"""Training of the default model: data shards, the VAE and DiT objectives, the `scenewright train` command."""
