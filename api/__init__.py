"""The HTTP front: a thin FastAPI app over the tables the workflows write."""
