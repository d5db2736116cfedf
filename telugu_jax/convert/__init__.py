"""PyTorch state dict <-> Flax pytree conversion."""
