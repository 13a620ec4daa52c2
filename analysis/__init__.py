"""Tables, significance tests, curves and figures: read results/, write results/."""
