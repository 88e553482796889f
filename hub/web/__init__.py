"""The hub's web side: the HTTP API (`api`), the dashboard pages, metrics, and the app.

`hub.web.app.create_app(store)` assembles them; `hub.web.deps` is what every router
shares (the store, the clock, the authenticated user).
"""
