"""Shared test configuration. Component tests keep their own fixtures in their folders."""
