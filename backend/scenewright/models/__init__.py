"""Neural network modules (plain PyTorch, hub parameter names): DiT, VAE, image encoders, attention."""
