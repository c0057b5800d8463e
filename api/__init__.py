"""The Online Retail REST service."""
