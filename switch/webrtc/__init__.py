"""The web console's test phone: WebRTC (aiortc) calls to the node's agents."""
