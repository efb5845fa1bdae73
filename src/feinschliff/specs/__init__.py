"""Recipe sections, one module per area (the Recipe itself is in feinschliff.recipe)."""
