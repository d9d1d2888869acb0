"""The event contract (events.md): Structs, the codec, JSON Schema export. Imports nothing of yibao."""
