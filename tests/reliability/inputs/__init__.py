"""Bad input through real servers: property-based fuzzing of every RPC, hostile image and
audio files, oversized and malformed messages, and the URI policy."""
