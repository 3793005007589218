"""Tables, figures, galleries and W&B."""
