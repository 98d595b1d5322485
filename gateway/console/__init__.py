"""The web console: plain HTML, CSS and JavaScript modules that the server serves at
``/console`` (``docs/console.md``).

Everything the console does, it does from the browser through the public API, with the key
its user signs in with; the server only hands out these files. There is no build step: the
files under ``static/`` are what the browser runs.
"""
