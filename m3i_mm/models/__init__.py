"""Algorithms, backbones, necks, heads, losses and target encoders."""
