"""The guard-room console: server-rendered pages with live updates, served by the gateway."""
