"""Settings and database plumbing shared by the service."""
