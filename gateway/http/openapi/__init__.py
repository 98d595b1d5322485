"""The OpenAPI document of API v1 (``document.py``), and the description of each route's
operation, by resource."""
