"""Thin AWS Lambda handlers over the other packages."""
