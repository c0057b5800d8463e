"""Test support shared by the service's and the job's tests: real databases and a real service process."""
