"""What comes in: the recipe, its data, the model."""
