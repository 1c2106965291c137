"""The root file system side: the sandbox, the bootstrap, unpacking and the tar stream of the tree."""
