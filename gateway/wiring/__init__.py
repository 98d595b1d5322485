"""The app factory and its adapters: each long-lived resource is one ``cleanup_ctx`` entry
that builds its objects with everything they need, starts its tasks, and closes them."""
