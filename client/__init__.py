"""fedkd's Flower ClientApp: decode, dispatch on the phase, answer with only what the phase declares."""
