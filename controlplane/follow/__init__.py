"""Replicas follow the database: change notifications, a listener that survives outages, reconciles."""
