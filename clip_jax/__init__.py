"""clip_jax: OpenAI CLIP in JAX/Flax NNX."""
