"""Base layer: configuration, typed models that cross the rooms, log setup. Imports no room."""
