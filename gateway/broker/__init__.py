"""The domain service behind the front doors: topics and their views, produce and routing,
idempotent answers, splits and merges, reads and retention. It knows no HTTP."""
