"""JSON Schemas of ocistrap's files and of the OCI documents it writes and checks."""
