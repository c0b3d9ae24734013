class PyntkError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
