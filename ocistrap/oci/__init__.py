"""The OCI side: the image model, blobs, layouts, assembling an image, SBOMs, provenance and signatures."""
