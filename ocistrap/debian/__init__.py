"""The Debian side: signed archive metadata, downloads, the cache, resolution and lockfiles."""
