"""ocistrap: verified, reproducible Debian OCI base images without root."""

__version__ = "0.1.0"
