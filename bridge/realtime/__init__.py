"""The upstream Realtime leg: client for Azure OpenAI / OpenAI, and the local emulator."""
