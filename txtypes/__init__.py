"""txtypes package."""
