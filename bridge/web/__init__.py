"""The HTTP app: softphone page, WebRTC signalling, dashboard, health and metrics."""
