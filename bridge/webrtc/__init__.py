"""WebRTC legs: a browser calls the bridge through an aiortc peer connection."""
