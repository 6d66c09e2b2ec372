"""HTTP and WebSocket routes for live and batch simultaneous translation."""
