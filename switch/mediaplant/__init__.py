"""The media plant: the calls' RTP legs, in the node's loop or in media worker processes."""


class MediaUnavailable(Exception):
    """No RTP port could be had for a new call."""
