"""Trainers, sharding and checkpointing."""
