"""The registry client: the distribution API, pushing, referrers and credentials."""
