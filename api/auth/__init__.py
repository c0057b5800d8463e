"""Authentication and authorization: API keys, OAuth2 clients and their tokens, scopes (docs/auth.md)."""
