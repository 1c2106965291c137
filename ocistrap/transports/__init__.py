"""Places an image can be written to or read from, one module each."""
