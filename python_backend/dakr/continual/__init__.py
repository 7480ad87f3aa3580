"""Continual-learning parts: HSIC alignment, feature mapping/pairing blocks, buffer and strategies."""
