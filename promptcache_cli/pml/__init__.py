"""The schema and prompt language (PML): parsing schemas and prompt files, and selecting modules and parameters."""
