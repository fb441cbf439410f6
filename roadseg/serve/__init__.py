"""Serving: the engine, the HTTP routes and guards, uploads, video, the live stream."""
