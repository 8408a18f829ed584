"""SIP user agent server: sans-I/O cores (message, sdp, transaction, dialog, ua) and the
asyncio adapter (service)."""
