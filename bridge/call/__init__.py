"""The call engine: everything between a media leg and a Realtime session."""
