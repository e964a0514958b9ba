"""polycom: polynomial composition activations (PolyNorm, PolyReLU) for language-model pretraining studies."""
