"""factory: recipes in, quantized LLaMA-3 / LLaVA-Next builds out (see README.md)."""
