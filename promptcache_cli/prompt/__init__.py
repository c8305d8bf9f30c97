"""Turning a schema into token positions: the chat template, the static layout, the typed plan of a prompt."""
