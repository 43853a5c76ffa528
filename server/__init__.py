"""fedkd's Flower ServerApp: config -> algorithm -> round loop -> results."""
