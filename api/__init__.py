"""The REST API over desired state (FastAPI)."""
