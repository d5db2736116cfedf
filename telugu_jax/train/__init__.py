"""Trainers, their shared loop helpers, and sharding."""
