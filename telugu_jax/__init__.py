"""telugu-jax: a JAX/Flax system for Telugu speech-to-speech AI."""
